"""numpyro ``Distribution`` classes over the genjax count likelihoods (float32-accurate NB and ZINB).

Use them anywhere numpyro takes a distribution::

    def model(counts):
        mu = numpyro.sample("mu", dist.LogNormal(0.0, 2.0))
        theta = numpyro.sample("theta", dist.LogNormal(0.0, 2.0))
        numpyro.sample("x", genjax.NegativeBinomial(mu, theta), obs=counts)

Parameterisation: ``mu`` mean, ``theta`` inverse dispersion, zero inflation as logits (``sigmoid(zi_logits)`` is
the probability of an extra zero). Samples are counts stored as floats (float32 unless x64 is enabled).

Validation follows numpyro: ``validate_args=None`` uses numpyro's global setting (``numpyro.enable_validation``),
``True`` / ``False`` force it. With validation on, concrete parameters are checked in the constructor and concrete
values in ``log_prob``; both raise ``ValueError`` naming the argument, the offending value and its index. Traced
values cannot be checked; ``log_prob`` then returns NaN for invalid counts (numpyro's own distributions return
a finite number there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from numpyro.distributions import constraints
from numpyro.distributions.distribution import Distribution
from numpyro.distributions.util import promote_shapes

from .._typing import Array, ArrayLike, PRNGKeyArray
from ._log_prob import nb_log_prob, zinb_log_prob
from ._moments import nb_variance, zinb_variance
from ._validation import validate_args_if
from ._variates import sample_nb, sample_zinb

__all__ = ["NegativeBinomial", "ZeroInflatedNegativeBinomial"]


def _resolvevalidate_args_if(validate_args) -> bool:
    """numpyro's convention: ``None`` follows the global switch (``numpyro.enable_validation``)."""
    return Distribution._validate_args if validate_args is None else bool(validate_args)


class NegativeBinomial(Distribution):
    """Negative binomial with mean ``mu`` and inverse dispersion ``theta`` (variance ``mu + mu^2 / theta``).

    The log-pmf is :func:`genjax.nb_log_prob` (Loader's saddle-point form, accurate in float32 up to
    ``theta = 1e8`` and beyond, where numpyro's ``NegativeBinomial2`` loses the answer); sampling is
    gamma-Poisson (:func:`genjax.sample_nb`).

    Arguments:
        mu: mean, ``>= 0``, any shape.
        theta: inverse dispersion, ``> 0``, broadcastable with ``mu``; the batch shape is the broadcast shape.
        validate_args: ``None`` (numpyro's global default), ``True`` or ``False``.

    Raises:
        ValueError: with validation on and concrete parameters, for ``mu < 0``, ``theta <= 0`` or non-finite
            values, naming the value and its index.
    """

    arg_constraints = {"mu": constraints.nonnegative, "theta": constraints.positive}
    support = constraints.nonnegative_integer
    pytree_data_fields = ("mu", "theta")

    def __init__(self, mu: ArrayLike, theta: ArrayLike, validate_args: bool | None = None):
        validate_args_if(
            _resolvevalidate_args_if(validate_args), type(self).__name__, mu=(mu, "mean"), theta=(theta, "positive")
        )
        self.mu, self.theta = promote_shapes(mu, theta)
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(mu), jnp.shape(theta))
        super().__init__(batch_shape, validate_args=validate_args)

    def sample(self, key: PRNGKeyArray, sample_shape: tuple[int, ...] = ()) -> Array:
        """Counts (floats) of shape ``sample_shape + batch_shape``."""
        shape = tuple(sample_shape) + self.batch_shape
        return sample_nb(key, self.mu, self.theta, shape, validate_args=False)

    def log_prob(self, value: ArrayLike) -> Array:
        """Log-pmf at ``value`` (broadcast with the batch shape); NaN for invalid counts under tracing.

        Raises:
            ValueError: with validation on and concrete ``value``, for negative, non-integer or NaN counts.
        """
        validate_args_if(self._validate_args, f"{type(self).__name__}.log_prob", value=(value, "counts"))
        return nb_log_prob(value, self.mu, self.theta, validate_args=False)

    @property
    def mean(self) -> Array:
        return jnp.broadcast_to(self.mu, self.batch_shape)

    @property
    def variance(self) -> Array:
        return jnp.broadcast_to(nb_variance(self.mu, self.theta), self.batch_shape)


class ZeroInflatedNegativeBinomial(Distribution):
    """Zero-inflated negative binomial: 0 with probability ``sigmoid(zi_logits)``, otherwise NB(``mu``, ``theta``).

    Log-pmf :func:`genjax.zinb_log_prob`, sampling :func:`genjax.sample_zinb`.

    Arguments:
        mu: NB mean, ``>= 0``.
        theta: NB inverse dispersion, ``> 0``.
        zi_logits: logits of the zero-inflation probability, finite; all three broadcast to the batch shape.
        validate_args: ``None`` (numpyro's global default), ``True`` or ``False``.

    Raises:
        ValueError: with validation on and concrete parameters, for invalid values, naming the value and index.
    """

    arg_constraints = {
        "mu": constraints.nonnegative,
        "theta": constraints.positive,
        "zi_logits": constraints.real,
    }
    support = constraints.nonnegative_integer
    pytree_data_fields = ("mu", "theta", "zi_logits")

    def __init__(
        self, mu: ArrayLike, theta: ArrayLike, zi_logits: ArrayLike, validate_args: bool | None = None
    ):
        validate_args_if(
            _resolvevalidate_args_if(validate_args),
            type(self).__name__,
            mu=(mu, "mean"),
            theta=(theta, "positive"),
            zi_logits=(zi_logits, "real"),
        )
        self.mu, self.theta, self.zi_logits = promote_shapes(mu, theta, zi_logits)
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(mu), jnp.shape(theta), jnp.shape(zi_logits))
        super().__init__(batch_shape, validate_args=validate_args)

    def sample(self, key: PRNGKeyArray, sample_shape: tuple[int, ...] = ()) -> Array:
        """Counts (floats) of shape ``sample_shape + batch_shape``."""
        shape = tuple(sample_shape) + self.batch_shape
        return sample_zinb(key, self.mu, self.theta, self.zi_logits, shape, validate_args=False)

    def log_prob(self, value: ArrayLike) -> Array:
        """Log-pmf at ``value``; NaN for invalid counts under tracing.

        Raises:
            ValueError: with validation on and concrete ``value``, for negative, non-integer or NaN counts.
        """
        validate_args_if(self._validate_args, f"{type(self).__name__}.log_prob", value=(value, "counts"))
        return zinb_log_prob(value, self.mu, self.theta, self.zi_logits, validate_args=False)

    @property
    def gate(self) -> Array:
        """Probability of an extra zero, ``sigmoid(zi_logits)``."""
        return jnp.broadcast_to(jax.nn.sigmoid(self.zi_logits), self.batch_shape)

    @property
    def mean(self) -> Array:
        return jnp.broadcast_to(jax.nn.sigmoid(-self.zi_logits) * self.mu, self.batch_shape)

    @property
    def variance(self) -> Array:
        return jnp.broadcast_to(zinb_variance(self.mu, self.theta, self.zi_logits), self.batch_shape)
