"""Query mapping onto a trained :class:`genjax.VAE`: scArches' architecture surgery (Lotfollahi et al. 2022,
"Mapping single-cell data to reference atlases by transfer learning", Nat. Biotechnol. 40:121).

A reference VAE conditions its encoder and decoder on categorical conditions (batches, ...) through one learned
row per category (:class:`genjax.nn.Covariates`: ``h = W x + b + sum_j E_j[c_j]``, the same as a linear layer on
the one-hot codes). A query data set brings batches the reference never saw. Surgery adds one row per new category
to every table indexed by that condition and trains only those rows on the query, every other weight frozen:

    E_j  (n_ref_j, H)  ->  [E_j ; E_new]  (n_ref_j + n_new_j, H)       first layer of encoder(s) and decoder
                                                                          (every layer with inject_all_layers)
    log_disp (n_ref, G) -> [log_disp ; new rows]                         dispersion="gene-category" on that key
    prior_mean_j, prior_logvar_j (n_ref_j, d) -> [...; new rows]         conditional_prior=True

New rows start at the mean of the reference rows (``init="mean"``: the new batch starts as an average reference
batch) or at zero (``init="zeros"``: no batch term); a latent library's log-normal prior gets, for a new category,
the mean and variance of the query cells' log library sizes (as scvi-tools computes it from data). Because the
encoder's weights for the data and for the reference categories stay fixed, the query cells are encoded into the
reference's latent space; only the new batch's offset is learned, by maximising the same ELBO the reference was
trained with.

Freezing is exact: the optimiser's update for a frozen entry is ``-0.0`` (:func:`zero_frozen_updates`), and
``p + (-0.0) == p`` bit for bit for every float ``p`` (``+0.0 + (-0.0) = +0.0``), so frozen weights are
bit-identical to the reference after any number of query epochs, and the reference cells' latent
representation under the query model equals the reference model's.

Options as scArches / scvi-tools' ``load_query_data``: ``freeze=True`` trains only the new rows;
``unfrozen_first_layer=True`` also trains the whole first layer of every encoder and of the decoder (data
weights, biases and every category row: scvi-tools' ``freeze_expression=False, freeze_decoder_first_layer=False``);
``freeze=False`` fine-tunes every weight.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import jax
import numpy as np
from flax import traverse_util

from .._checks import check_choice
from .._typing import Params
from ..data import DataRegistry
from ..training import TrainingDivergedError, json_digest, save_pytree
from ..vae import dummy_batch
from ._base import MODEL_FILE, TrainingCells, json_default, read_model_meta
from ._vae import VAE

__all__ = ["QueryVAE", "load_query_data", "QUERY_INITS"]

QueryInit = Literal["mean", "zeros"]
QUERY_INITS = ("mean", "zeros")
"""How the rows of new categories start: the mean of the reference rows of that table, or zeros."""

FIRST_LAYER = ("dense_0", "cov_0")  # the first layer of a CovariateMLP: data weights and condition terms
TRUNKS = ("z_encoder", "l_encoder", "decoder")  # the module's CovariateMLPs


class QueryVAE(VAE):
    """A :class:`genjax.VAE` built by :func:`load_query_data` whose :meth:`fit` trains only the parameters of the
    query's new categories (and, as chosen, the first layers), every other weight frozen bit for bit.

    Everything else is a :class:`genjax.VAE` (``latent``, ``generate``, ``save``, ...); a saved query model loads
    back as a plain :class:`genjax.VAE` with the extended categories and the whole history.

    Attributes (beyond :class:`genjax.VAE`'s):
        trainable: boolean pytree with the structure of ``params`` (numpy arrays): which entries query training
            may change.
        query_categories: ``{condition: new categories}`` added for the query (in code order after the
            reference's).
        reference_epochs: number of history records inherited from the reference (the rest are query epochs,
            each with ``"stage": "query"``).
    """

    trainable: Params
    query_categories: dict[str, tuple[str, ...]]
    reference_epochs: int

    @property
    def n_trainable(self) -> int:
        """Number of parameter entries query training may change."""
        return int(sum(np.broadcast_to(m, np.shape(p)).sum() for m, p in
                       zip(jax.tree.leaves(self.trainable), jax.tree.leaves(self.params), strict=True)))

    def fit(
        self,
        max_epochs: int | None = None,
        batch_size: int = 128,
        *,
        lr: float = 1e-3,
        eps: float = 0.01,
        weight_decay: float = 0.0,
        kl_warmup_epochs: float | None = None,
        beta: float = 1.0,
        train_size: float = 0.9,
        early_stopping: bool = False,
        patience: int = 45,
        checkpoint_dir=None,
        resume: bool = False,
        restart: bool = False,
        seed: int = 0,
        progress: bool = True,
        devices=None,
        **train_config,
    ) -> list[dict]:
        """Train the query's parameters on the query data with :func:`genjax.fit` (same loss, validation,
        checkpoints and resume as :meth:`genjax.VAE.fit`); frozen entries keep the reference's values exactly.

        Arguments are those of :meth:`genjax.VAE.fit`, with two defaults changed for fine-tuning:
        ``weight_decay=0.0`` (scvi-tools' advice for query training: decay would pull the new rows to zero for
        no likelihood reason) and ``kl_warmup_epochs=None`` (the reference ended its training at KL weight
        ``beta``; the query is fitted under that same ELBO, so that it lands in the same latent space).

        Returns:
            The whole history as a list of per-epoch records (``self.history`` holds the same): the reference's
            records unchanged, then one record per query epoch (appended by every call) marked ``"stage":
            "query"``, whose ``epoch`` continues the history's numbering and ``query_epoch`` counts the epochs of
            this query run. (:meth:`genjax.VAE.train`, scvi-tools' keywords, calls this method.)

        Raises:
            ValueError: bad settings (before any compute); a model without data.
            FingerprintMismatchError: ``resume`` with checkpoints of another run.
            TrainingDivergedError: a non-finite step; the model keeps the last finite parameters and the
                history up to there.
        """
        before = list(self.history)
        first_epoch = int(before[-1].get("epoch", len(before) - 1)) + 1 if before else 0

        def marked(records):  # query records: epochs numbered on from the history's, the run's own kept apart
            return [{**r, "epoch": first_epoch + int(r.get("epoch", i)), "query_epoch": int(r.get("epoch", i)),
                     "stage": "query"} for i, r in enumerate(records)]

        try:
            super().fit(max_epochs, batch_size, lr=lr, eps=eps, weight_decay=weight_decay,
                        kl_warmup_epochs=kl_warmup_epochs, beta=beta, train_size=train_size,
                        early_stopping=early_stopping, patience=patience, checkpoint_dir=checkpoint_dir,
                        resume=resume, restart=restart, seed=seed, progress=progress, devices=devices,
                        trainable=self.trainable, **train_config)
        except TrainingDivergedError:
            self.history = before + marked(self.history)
            raise
        self.history = before + marked(self.history)
        return list(self.history)

    def fingerprint(self, data=None) -> dict:
        """:meth:`genjax.VAE.fingerprint` plus the query stage and its new categories (so that a query run's
        checkpoints are never resumed by a reference run on the same cells, or the other way round)."""
        return {**super().fingerprint(data), "stage": "query",
                "query_categories": json_digest({k: list(v) for k, v in self.query_categories.items()})}



def load_query_data(
    adata,
    reference,
    *,
    freeze: bool = True,
    unfrozen_first_layer: bool = False,
    init: QueryInit = "mean",
) -> QueryVAE:
    """A VAE for mapping the query ``adata`` onto a trained reference (scArches architecture surgery): the
    reference's weights, one new row per new category in every category-indexed table, and a :meth:`fit` that
    trains only those rows. Train it with ``model.fit(...)`` (or scvi-tools' ``model.train(...)``), then read
    ``model.latent(adata)``: the query cells in the reference's latent space.

    Arguments:
        adata: query cells x genes (``X`` or the reference's layer; raw counts for count likelihoods). Its genes
            must be exactly the reference's (any order: they are matched by name); its ``obs`` must hold every
            condition and continuous covariate of the reference. Values of a condition that the reference never
            saw become new categories, appended after the reference's (pandas categorical order, else sorted).
        reference: a :class:`genjax.VAE` or the folder of a saved one.
        freeze: ``True``: train only the new categories' rows (and the first layers with
            ``unfrozen_first_layer``); ``False``: fine-tune every weight.
        unfrozen_first_layer: also train the whole first layer of the encoder(s) and the decoder.
        init: ``"mean"`` (default): new rows start at the mean of the reference rows of their table, so a new
            batch starts as an average reference batch; ``"zeros"``: they start at zero (no batch term).

    Returns:
        A :class:`QueryVAE` on ``adata`` (its default data) whose registry is the reference's plus the new
        categories, whose ``history`` is the reference's, and whose :attr:`~QueryVAE.trainable` marks what
        query training changes. A query without new categories is refused when nothing would be trained (see
        Raises): encode such data with ``reference.latent(adata)`` directly.

    Raises:
        TypeError: ``reference`` is neither a :class:`genjax.VAE` nor a path.
        FileNotFoundError / ValueError: ``reference`` is a folder without a genjax model, or with another kind of
            model (named).
        ValueError: query genes missing from ``adata`` or genes the reference does not know (named, with
            counts); a missing (NaN) condition value; a query with no new category while ``freeze=True`` and
            ``unfrozen_first_layer=False`` (nothing to train); an unknown ``init``; invalid counts (named cell
            and gene, as :class:`genjax.VAE`).
        KeyError: a condition or covariate of the reference missing from ``adata.obs``.
    """
    check_choice("init", init, QUERY_INITS)
    ref = _as_reference(reference)
    registry = ref.registry
    _check_genes(adata, registry.var_names)
    new = _new_categories(adata, registry)
    if freeze and not unfrozen_first_layer and not any(new.values()):
        seen = {k: sorted({str(v) for v in adata.obs[k]}) for k in registry.conditions}
        raise ValueError(
            f"nothing to train: every value of the query's conditions {seen} is a category of the reference, and "
            "freeze=True leaves every reference weight frozen. Encode the query directly with "
            "reference.latent(adata), or pass unfrozen_first_layer=True / freeze=False to fine-tune.")
    extended = DataRegistry(registry.var_names, {k: (*v, *new[k]) for k, v in registry.conditions.items()},
                            dict(registry.continuous), registry.layer)
    n_new = tuple(len(new[k]) for k in registry.conditions)
    module = ref.module.clone(n_categories=extended.n_categories,
                              library_prior=_placeholder_prior(ref.module, n_new))
    abstract = jax.eval_shape(module.init, jax.random.key(0), dummy_batch(module))["params"]
    params, first_new = _extend_params(ref.params, abstract, n_new, module.dispersion_index, init)
    model = _load_extended(ref, extended, module.library_prior, params, adata)
    cells = _query_cells(model)
    model.training_cells = TrainingCells(np.concatenate([ref.training_cells.cat, cells.cat]),
                                         np.concatenate([ref.training_cells.cont, cells.cont]),
                                         np.concatenate([ref.training_cells.log_lib, cells.log_lib]))
    if ref.module.library_index is not None and n_new[ref.module.library_index]:
        model.module = model.module.clone(library_prior=_library_prior(model.module, cells, n_new))
    model.trainable = _trainable(params, first_new, freeze=freeze, unfrozen_first_layer=unfrozen_first_layer)
    model.query_categories = {k: tuple(v) for k, v in new.items() if v}
    model.reference_epochs = len(ref.history)
    return model


def _as_reference(reference) -> VAE:
    """The reference as a :class:`VAE` (loaded if a path).

    Raises:
        TypeError: neither a VAE nor a path. FileNotFoundError / ValueError: as :meth:`VAE.load`.
    """
    if isinstance(reference, VAE):
        return reference
    if isinstance(reference, (str, os.PathLike)):
        return VAE.load(reference)
    hint = " (its VAE is reference.vae)" if isinstance(getattr(reference, "vae", None), VAE) else ""
    raise TypeError(f"reference must be a genjax.VAE or the folder of a saved one; got a "
                    f"{type(reference).__name__}{hint}")


def _check_genes(adata, var_names: tuple[str, ...]) -> None:
    """Raise unless the query's genes are exactly the reference's (in any order), naming the differences."""
    names = [str(v) for v in adata.var_names]
    if tuple(names) == var_names:
        return
    have, want = set(names), set(var_names)
    if len(have) != len(names):
        seen = set()
        dup = next(g for g in names if g in seen or seen.add(g))
        raise ValueError(f"query gene names must be unique; {dup!r} occurs more than once "
                         "(call adata.var_names_make_unique())")
    missing = [g for g in var_names if g not in have]
    extra = [g for g in names if g not in want]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} reference gene(s) missing from the query: {missing[:10]}"
                         + (" ..." if len(missing) > 10 else ""))
        if extra:
            parts.append(f"{len(extra)} query gene(s) the reference does not know: {extra[:10]}"
                         + (" ..." if len(extra) > 10 else ""))
        raise ValueError("the query must have exactly the reference's genes (any order); " + "; ".join(parts)
                         + ". Subset the query to the reference genes (adata[:, reference.var_names]); a gene "
                         "the query did not measure can be added as a column of zeros.")


def _new_categories(adata, registry: DataRegistry) -> dict[str, list[str]]:
    """``{condition: values of the query that the reference does not know}``, in pandas categorical order (else
    sorted as strings).

    Raises:
        KeyError: a condition missing from ``adata.obs``. ValueError: a missing (NaN) value, naming the cell.
    """
    out = {}
    for key, cats in registry.conditions.items():
        if key not in adata.obs:
            raise KeyError(f"condition {key!r} of the reference not found in the query's obs (columns: "
                           f"{list(adata.obs.columns)})")
        col = adata.obs[key]
        isna = np.asarray(col.isna())
        if isna.any():
            i = int(np.flatnonzero(isna)[0])
            raise ValueError(f"condition {key!r} is missing (NaN) for query cell {str(adata.obs_names[i])!r} "
                             f"(row {i})")
        present = {str(v) for v in col}
        known = set(cats)
        order = [str(c) for c in col.cat.categories] if hasattr(col, "cat") else sorted(present)
        out[key] = [c for c in order if c in present and c not in known]
    return out


def _placeholder_prior(module, n_new: tuple[int, ...]):
    """The reference's library prior with one entry per new category of the library key (the reference's first
    entry; replaced by the query cells' statistics once they are encoded)."""
    means, varis = module.library_prior
    if module.library_index is None:
        return means, varis
    k = n_new[module.library_index]
    return (*means, *[means[0]] * k), (*varis, *[varis[0]] * k)


def _library_prior(module, cells: TrainingCells, n_new: tuple[int, ...]):
    """The library prior with, for each new category of the library key, the mean and variance (floored at 1e-4
    as the reference's) of the log library sizes of the query cells of that category."""
    j = module.library_index
    means, varis = (list(v) for v in module.library_prior)
    n_ref = len(means) - n_new[j]
    for c in range(n_ref, n_ref + n_new[j]):
        v = cells.log_lib[cells.cat[:, j] == c].astype(np.float64)
        means[c], varis[c] = float(v.mean()), max(float(v.var()), 1e-4)
    return tuple(means), tuple(varis)


def _category_owner(path: tuple[str, ...], dispersion_index: int) -> int | None:
    """The condition whose categories index axis 0 of the parameter at ``path``, or ``None`` if none does."""
    name = path[-1]
    if name == "embedding" and len(path) >= 2 and path[-2].startswith("cat_"):
        return int(path[-2][len("cat_"):])
    for prefix in ("prior_mean_", "prior_logvar_"):
        if name.startswith(prefix):
            return int(name[len(prefix):])
    if name == "log_disp":
        return dispersion_index
    return None


def _extend_params(ref_params: Params, abstract, n_new: tuple[int, ...], dispersion_index: int, init: str):
    """The reference parameters grown to the extended module's shapes (``abstract``), and for each parameter the
    first row that is new (``None``: none).

    Raises:
        NotImplementedError: a parameter changed shape in a way this function does not know (instead of guessing).
    """
    ref_flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, ref_params))
    out, first_new = {}, {}
    for path, leaf in traverse_util.flatten_dict(abstract).items():
        old = ref_flat[path]
        if old.shape == leaf.shape:
            out[path], first_new[path] = old, None
            continue
        j = _category_owner(path, dispersion_index)
        if (j is None or old.ndim != len(leaf.shape) or old.shape[1:] != leaf.shape[1:]
                or leaf.shape[0] - old.shape[0] != n_new[j]):
            raise NotImplementedError(f"load_query_data does not know how parameter {'/'.join(path)} "
                                      f"{old.shape} -> {leaf.shape} depends on the categories")
        rows = (np.broadcast_to(old.mean(axis=0, dtype=np.float64), (n_new[j], *old.shape[1:]))
                if init == "mean" else np.zeros((n_new[j], *old.shape[1:])))
        out[path] = np.concatenate([old, rows.astype(old.dtype)])
        first_new[path] = old.shape[0]
    return traverse_util.unflatten_dict(out), first_new


def _trainable(params: Params, first_new: Mapping[tuple, int | None], *, freeze: bool,
               unfrozen_first_layer: bool) -> Params:
    """The boolean mask pytree of what query training may change (numpy arrays shaped as the parameters)."""
    flat = traverse_util.flatten_dict(params)
    masks = {}
    for path, value in flat.items():
        shape = np.shape(value)
        if not freeze or (unfrozen_first_layer and path[0] in TRUNKS and path[1] in FIRST_LAYER):
            masks[path] = np.ones(shape, bool)
        elif first_new[path] is not None:
            rows = np.arange(shape[0]) >= first_new[path]
            masks[path] = np.broadcast_to(rows.reshape((-1,) + (1,) * (len(shape) - 1)), shape).copy()
        else:
            masks[path] = np.zeros(shape, bool)
    return traverse_util.unflatten_dict(masks)


def _load_extended(ref: VAE, registry: DataRegistry, library_prior, params: Params, adata) -> QueryVAE:
    """The query model, through the saved-model format (the one public way to build a VAE from given settings,
    registry and parameters): the reference written to a temporary folder, its registry, library prior and
    parameters replaced, read back with ``adata`` as its data (validated against the extended registry)."""
    with tempfile.TemporaryDirectory(prefix="genjax-query-") as tmp:
        ref_dir, query_dir = Path(tmp) / "reference", Path(tmp) / "query"
        ref.save(ref_dir)
        meta = read_model_meta(ref_dir, VAE.format_tag)
        shutil.copytree(ref_dir, query_dir)
        meta["registry"] = registry.to_dict()
        meta["library_prior"] = [list(v) for v in library_prior]
        (query_dir / MODEL_FILE).write_text(json.dumps(meta, indent=1, default=json_default))
        save_pytree(query_dir / "params.msgpack", params)
        return QueryVAE.load(query_dir, adata=adata)


def _query_cells(model: VAE, chunk: int = 4096) -> TrainingCells:
    """Codes, standardised covariates and log library sizes of the model's data, as the model encodes them."""
    n = model.adata.n_obs
    cat, cont, lib = [], [], []
    for start in range(0, n, chunk):
        b = model.batch(None, np.arange(start, min(n, start + chunk)))
        m = b.log_lib.shape[0]
        labels = None if b.cond is None else b.cond.labels
        covs = None if b.cond is None else b.cond.covariates
        cat.append(np.zeros((m, len(model.registry.conditions)), np.int32) if labels is None
                   else np.asarray(labels, np.int32))
        cont.append(np.zeros((m, len(model.registry.continuous)), np.float32) if covs is None
                    else np.asarray(covs, np.float32))
        lib.append(np.asarray(b.log_lib, np.float32))
    return TrainingCells(np.concatenate(cat), np.concatenate(cont), np.concatenate(lib))
