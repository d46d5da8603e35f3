"""A diffusion transformer field (DiT; Peebles & Xie 2023, "Scalable Diffusion Models with Transformers") over
tokens built from groups of dimensions: :class:`DiTField`, its block :class:`DiTBlock`, and
:func:`program_tokens`, the gene-programme grouping.

Tokenisation is a static assignment ``token(j)`` of each of the ``d`` dimensions to one of ``T`` tokens:

* latent tokens: ``tokens=g`` groups consecutive dimensions, ``token(j) = j // g`` (the last group may be short);
* gene programmes: ``tokens=(k_0, ..., k_{d-1})`` gives each dimension (gene) its token, e.g. from
  :func:`program_tokens` (k-means of the genes' PCA loadings).

The field is

    h_k = p_k + sum_{j: token(j) = k} x_j e_j                    (T tokens of width w; e_j, p_k learned)
    c = MLP(sinusoidal(t)) + ConditionEmbedding(cond)           (width w)
    h <- DiTBlock(h, c), n_layers times
    y = LN(h) (1 + scale(c)) + shift(c)
    F_j = <y_{token(j)}, r_j> + b_j                            (per-dimension read-out r_j, b_j)

and each :class:`DiTBlock` is pre-LN self-attention and an MLP, both with adaLN-Zero: ``LN(h) (1 + scale) + shift``
before and ``gate *`` after each branch, with ``[shift, scale, gate] x 2 = Dense(silu(c))`` zero-initialised, so a
fresh block is the identity and a fresh field is its read-out of the embedded input (DiT section 3.2). Nothing in a
block depends on the order of the tokens (no positional encoding: the only position information is ``p_k`` and
``e_j``), so a block is permutation-equivariant over tokens.

Cost: every token passes through the block weights, so at equal parameter count a DiT does ``T`` times the dense
work of :class:`~genjax.nn.FieldNet` per point, plus attention (``T^2 w`` per layer).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from .._checks import check_int
from .._typing import Array
from ..data import Condition, kmeans_labels
from ._embedding import ConditionEmbedding
from ._mlp import MLP
from ._time import SinusoidalEmbedding

__all__ = ["DiTBlock", "DiTField", "program_tokens", "token_ids"]


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
    # no affine parameters: adaLN supplies the scale and shift
    return nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype, name=name)


def _check_heads(width: int, n_heads: int) -> None:
    check_int("n_heads", n_heads)
    if width % n_heads:
        raise ValueError(f"n_heads={n_heads} must divide the token width n_hidden={width}")


class DiTBlock(nn.Module):
    """A transformer block with adaLN-Zero conditioning (Peebles & Xie 2023, Figure 3):

        h <- h + g1 * Attention(LN(h) (1 + s1) + b1)
        h <- h + g2 * MLP(LN(h) (1 + s2) + b2)

    with ``[b1, s1, g1, b2, s2, g2] = Dense(act(c))`` per point, that Dense zero-initialised (kernel and bias), so
    at initialisation the gates are 0 and the block returns ``h`` exactly. Multi-head scaled dot-product
    self-attention over the tokens, no positional encoding and no mask: permuting the tokens permutes the output.

    Attributes:
        n_heads: attention heads (must divide the token width).
        mlp_ratio: hidden width of the MLP branch as a multiple of the token width.
        activation: nonlinearity of the MLP branch and before the modulation Dense.
        dtype: computation dtype (parameters stay float32).

    ``__call__(h, c)``: ``h: (n, T, w)`` tokens, ``c: (n, e)`` the time + condition embedding -> ``(n, T, w)``.

    Raises:
        ValueError: ``n_heads`` does not divide ``w`` (at initialisation, before any compute).
    """

    n_heads: int = 4
    mlp_ratio: float = 4.0
    activation: Callable[[Array], Array] = nn.silu
    dtype: Any = None

    @nn.compact
    def __call__(self, h: Array, c: Array) -> Array:
        n, n_tokens, width = h.shape
        _check_heads(width, self.n_heads)
        zeros = nn.initializers.zeros
        mod = nn.Dense(6 * width, kernel_init=zeros, bias_init=zeros, dtype=self.dtype,
                       name="modulation")(self.activation(c))
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(mod[:, None, :], 6, axis=-1)

        y = _layer_norm(self.dtype, "norm_attention")(h) * (1.0 + scale1) + shift1
        head = width // self.n_heads
        qkv = nn.Dense(3 * width, dtype=self.dtype, name="qkv")(y).reshape(n, n_tokens, 3, self.n_heads, head)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (n, T, heads, head)
        logits = jnp.einsum("nthd,nshd->nhts", q, k) / math.sqrt(head)
        att = nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        y = jnp.einsum("nhts,nshd->nthd", att, v).reshape(n, n_tokens, width)
        h = h + gate1 * nn.Dense(width, dtype=self.dtype, name="attention_out")(y)

        y = _layer_norm(self.dtype, "norm_mlp")(h) * (1.0 + scale2) + shift2
        y = nn.Dense(max(1, int(round(self.mlp_ratio * width))), dtype=self.dtype, name="mlp_in")(y)
        y = nn.Dense(width, dtype=self.dtype, name="mlp_out")(self.activation(y))
        return h + gate2 * y


def token_ids(tokens: int | Sequence[int], d: int) -> tuple[int, ...]:
    """The token of each of ``d`` dimensions, checked: ``tokens`` a group size ``g`` (``j // g``) or ``d`` ids.

    Arguments:
        tokens: an int group size (``1 <= g <= d``) or a sequence of ``d`` non-negative integer ids using every
            id in ``[0, T)`` (``T`` = largest id + 1).
        d: the number of dimensions.

    Returns:
        a tuple of ``d`` Python ints in ``[0, T)``, every value present.

    Raises:
        ValueError: a group size outside ``[1, d]``, a sequence whose length is not ``d`` (the tokens do not cover
            the dimensions), non-integer or negative ids, or unused ids (naming them).
    """
    d = check_int("d (dimensions of the field)", d)
    if isinstance(tokens, numbers.Integral) and not isinstance(tokens, bool):
        g = int(tokens)
        if not 1 <= g <= d:
            raise ValueError(f"tokens={g} is a group size and must be in [1, d={d}]")
        return tuple(j // g for j in range(d))
    if isinstance(tokens, str | bytes | bool) or not isinstance(tokens, Sequence | np.ndarray):
        raise ValueError(f"tokens must be an int group size or a sequence of per-dimension token ids; got {tokens!r}")
    ids = np.asarray(tokens)
    if ids.ndim != 1 or len(ids) != d:
        raise ValueError(f"tokens must give one token id per dimension: {d} ids; got {len(ids)} "
                         f"(shape {ids.shape}) for a field over d={d} dimensions")
    if d and (not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0):
        bad = [i for i, v in enumerate(tokens) if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < 0]
        raise ValueError(f"token ids must be non-negative integers; dimension {bad[0]} has {tokens[bad[0]]!r}")
    missing = sorted(set(range(int(ids.max()) + 1)) - set(ids.tolist()))
    if missing:
        raise ValueError(f"token ids must use every id in [0, {int(ids.max()) + 1}); ids {missing[:10]} have no "
                         f"dimension (relabel the tokens contiguously)")
    return tuple(int(i) for i in ids)


class DiTField(nn.Module):
    """A diffusion-transformer field ``F(x, t, cond) -> R^d`` over tokens of grouped dimensions (see the module
    docstring for the formula); a drop-in replacement for :class:`~genjax.nn.FieldNet` (same call, same
    conditioning attributes), so :func:`genjax.fit_field`, guidance and the samplers take it unchanged.

    Attributes:
        tokens: the tokenisation: an int group size ``g`` (latent tokens: dimensions ``[k g, (k + 1) g)`` form
            token ``k``, the last one may be short) or a tuple of ``d`` token ids (e.g. gene programmes from
            :func:`program_tokens`); must be hashable (a tuple, not a list).
        n_hidden: token width ``w`` (also the width of the time + condition embedding).
        n_layers: number of :class:`DiTBlock`.
        n_heads: attention heads (must divide ``n_hidden``).
        mlp_ratio: MLP hidden width of each block as a multiple of ``n_hidden``.
        time_features: size of the sinusoidal time features.
        time_scale: multiplies ``t`` before the sinusoids.
        n_categories: categories per conditioning attribute (empty: no categorical conditioning).
        n_continuous: continuous covariates (0: none).
        activation: nonlinearity (time MLP, modulation input, block MLPs).
        zero_output: zero-initialise the per-dimension read-out (the field starts at exactly 0); otherwise it is
            LeCun-normal and the field starts as the read-out of the layer-normed input tokens, whatever ``t`` and
            ``cond`` (every adaLN modulation starts at zero).
        dtype: computation dtype (e.g. ``jnp.bfloat16`` on accelerators); parameters stay float32.

    Parameters (besides the blocks): ``dim_embedding`` ``(d, w)`` (``e_j``), ``token_embedding`` ``(T, w)``
    (``p_k``), ``readout_kernel`` ``(d, w)`` (``r_j``), ``readout_bias`` ``(d,)`` (``b_j``).

    ``__call__(x, t, cond=None)``: ``x: (n, d)``, ``t: (n,)``, ``cond`` a :class:`Condition` with leading ``n``
    or ``None`` (unconditional: the null tokens) -> ``(n, d)`` in ``x``'s dtype.

    Raises:
        ValueError: at initialisation, before any compute: tokens that do not cover the ``d`` dimensions
            (:func:`token_ids`), ``n_heads`` not dividing ``n_hidden``, or ``cond`` given to an unconditional field.
    """

    tokens: int | tuple[int, ...] = 2
    n_hidden: int = 64
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    time_features: int = 64
    time_scale: float = 1000.0
    n_categories: Sequence[int] = ()
    n_continuous: int = 0
    activation: Callable[[Array], Array] = nn.silu
    zero_output: bool = False
    dtype: Any = None

    @property
    def conditional(self) -> bool:
        """Whether the network has conditioning slots."""
        return bool(self.n_categories) or self.n_continuous > 0

    def token_ids(self, d: int) -> tuple[int, ...]:
        """The token of each dimension for a ``d``-dimensional input, after checking every setting (see
        :func:`token_ids`; also raises when ``n_heads`` does not divide ``n_hidden``)."""
        check_int("n_hidden", self.n_hidden)
        check_int("n_layers", self.n_layers, low=0)
        _check_heads(self.n_hidden, self.n_heads)
        return token_ids(self.tokens, d)

    @nn.compact
    def __call__(self, x: Array, t: Array, cond: Condition | None = None) -> Array:
        if x.ndim != 2:
            raise ValueError(f"DiTField: x must be (n, d); got shape {x.shape}")
        if cond is not None and not self.conditional:
            raise ValueError("cond was given to an unconditional network (n_categories=() and n_continuous=0)")
        n, d = x.shape
        ids = self.token_ids(d)
        n_tokens, width = max(ids) + 1, self.n_hidden
        group = max(np.bincount(ids))
        dtype = self.dtype or jnp.float32

        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (n,))
        c = MLP((width, width), self.activation, dtype=self.dtype, name="time_mlp")(
            SinusoidalEmbedding(self.time_features, self.time_scale)(t))
        if self.conditional:
            c = c + ConditionEmbedding(self.n_categories, self.n_continuous, width, self.dtype,
                                       name="cond_embedding")(cond, (n,))

        embed = self.param("dim_embedding", nn.initializers.normal(1.0 / math.sqrt(group)), (d, width))
        pos = self.param("token_embedding", nn.initializers.normal(0.02), (n_tokens, width))
        assign = jnp.asarray(np.eye(n_tokens, dtype=np.float32)[list(ids)], dtype)  # (d, T) one-hot
        # h_k = p_k + sum_{token(j) = k} x_j e_j
        h = jnp.einsum("nd,dw,dt->ntw", x.astype(dtype), embed.astype(dtype), assign) + pos.astype(dtype)

        for i in range(self.n_layers):
            h = DiTBlock(self.n_heads, self.mlp_ratio, self.activation, self.dtype, name=f"block_{i}")(h, c)

        zeros = nn.initializers.zeros
        shift, scale = jnp.split(nn.Dense(2 * width, kernel_init=zeros, bias_init=zeros, dtype=self.dtype,
                                          name="final_modulation")(self.activation(c))[:, None, :], 2, axis=-1)
        y = _layer_norm(self.dtype, "final_norm")(h) * (1.0 + scale) + shift
        init = zeros if self.zero_output else nn.initializers.lecun_normal()
        kernel = self.param("readout_kernel", lambda key, shape: init(key, shape[::-1]).T, (d, width))
        bias = self.param("readout_bias", zeros, (d,))
        out = jnp.einsum("ndw,dw->nd", y[:, np.asarray(ids)], kernel.astype(y.dtype)) + bias.astype(y.dtype)
        return out.astype(x.dtype)


def program_tokens(loadings, n_tokens: int, seed: int = 0) -> tuple[int, ...]:
    """Gene-programme token ids for :class:`DiTField`: k-means of the rows of a (genes x k) loading matrix.

    Each gene is a point (its row of ``loadings``, e.g. the PCA loadings of standardised log1p expression, or a
    VAE decoder's weights); k-means (k-means++ initialisation, best of 4 seeded restarts by within-cluster sum of
    squares, :func:`genjax.data.kmeans_labels`) groups them into ``n_tokens`` programmes. Clusters are relabelled
    in order of first appearance along the genes (gene 0 is in token 0), and an empty cluster is dropped, so the
    ids are contiguous and may number fewer than ``n_tokens``.

    Arguments:
        loadings: ``(genes, k)`` finite real array.
        n_tokens: number of programmes, ``1 <= n_tokens <= genes``.
        seed: seed of the k-means restarts; the same inputs and seed give the same ids.

    Returns:
        a tuple of ``genes`` Python ints in ``[0, T)``, ``T <= n_tokens`` (pass it as ``DiTField(tokens=...)``).

    Raises:
        ValueError: ``loadings`` not a finite 2-d array, or ``n_tokens`` outside ``[1, genes]``.
    """
    a = np.asarray(loadings, np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"loadings must be a (genes, k) matrix; got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        g, j = np.argwhere(bad)[0]
        raise ValueError(f"loadings must be finite; found {a[g, j]} at gene {g}, column {j}")
    n_tokens = check_int("n_tokens", n_tokens, low=1, high=a.shape[0])
    labels = kmeans_labels(a, n_tokens, int(seed)) if n_tokens > 1 else np.zeros(a.shape[0], np.int32)
    order = {}
    for lab in labels.tolist():
        order.setdefault(lab, len(order))
    return tuple(order[lab] for lab in labels.tolist())
