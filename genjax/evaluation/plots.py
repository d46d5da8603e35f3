"""``genjax.plots``: matplotlib figures of training runs and of :func:`genjax.metrics.evaluate` results.

Every function builds a :class:`matplotlib.figure.Figure` directly (no ``pyplot``, so no global backend or
figure state is touched; saving uses the Agg canvas), returns it, and with ``path=`` also writes a PNG
(atomically: a temporary file renamed into place). Typical use::

    ev = genjax.metrics.evaluate(heldout, generated, condition_key="cell_type", control=train)
    genjax.plots.evaluation_panel(ev, path="out/panel.png")
    paths = genjax.plots.save_all(ev, "out/figures", history=fit_result.history)

Figures: :func:`training_curves`, :func:`embedding` (PCA, or UMAP when umap-learn is installed),
:func:`gene_statistics`, :func:`condition_panels`, :func:`condition_metrics`, :func:`evaluation_panel` (the
seed notebook's 2 x 3 panel: count distribution, log1p distribution, gene means, gene variances, gene sparsity,
PCA overlay), and of a trained VAE :func:`latent_traversal` (the decoded expression of the genes that respond most
as one latent dimension moves, Higgins et al. 2017's traversal plots for cells).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from .._checks import check_choice, check_int, check_range
from ._evaluate import ALL, METRICS, Evaluation, SetSummary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "training_curves",
    "embedding",
    "gene_statistics",
    "condition_panels",
    "condition_metrics",
    "evaluation_panel",
    "latent_traversal",
    "LatentTraversal",
    "save_all",
    "save_figure",
]

REAL_COLOR = "#4c72b0"
GENERATED_COLOR = "#dd8452"
CONTROL_COLOR = "#8c8c8c"
_SKIP_KEYS = {"epoch", "step", "time"}


def save_figure(fig: Figure, path, *, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (temporary file in the same folder, then renamed).

    Creates the parent folder. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)  # constrained layout already fits the margins
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _new_figure(**kwargs) -> Figure:
    # matplotlib is imported on first use, so `import genjax` stays light
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _finish(fig: Figure, path) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _check_evaluation(ev) -> Evaluation:
    if not isinstance(ev, Evaluation):
        raise TypeError(f"expected a genjax.metrics.Evaluation (from genjax.metrics.evaluate); got {type(ev).__name__}")
    return ev


# training curves


def _history_series(history: Sequence[Mapping]) -> tuple[np.ndarray, str, dict[str, dict[str, np.ndarray]]]:
    """x values, x label and {base metric: {"train" | "val": values}} from a list of per-epoch dicts."""
    if not isinstance(history, Sequence) or not history or not all(isinstance(r, Mapping) for r in history):
        raise ValueError("history must be a non-empty list of dicts (one per epoch, as genjax.fit returns)")
    xkey = "epoch" if all("epoch" in r for r in history) else None
    x = np.array([r["epoch"] for r in history], float) if xkey else np.arange(len(history), dtype=float)
    keys = []
    for r in history:
        for k, v in r.items():
            if k not in _SKIP_KEYS and k not in keys and isinstance(v, (int, float, np.number, np.ndarray)) \
                    and np.ndim(v) == 0:
                keys.append(k)
    series: dict[str, dict[str, np.ndarray]] = {}
    for k in keys:
        base, part = (k[4:], "val") if k.startswith("val_") else (k, "train")
        series.setdefault(base, {})[part] = np.array([float(r.get(k, np.nan)) for r in history])
    return x, xkey or "record", series


def training_curves(
    history,
    *,
    keys: Sequence[str] | None = None,
    log_scale: str | bool = "auto",
    path=None,
    title: str | None = None,
) -> Figure:
    """Training (and validation) curves, one panel per quantity.

    Arguments:
        history: a list of per-epoch dicts as :func:`genjax.fit` returns (``epoch``, ``loss``, aux means,
            ``val_loss``, ``val_*``), or a dict ``{stage name: history}`` for several fits (e.g. the VAE and the
            latent prior), drawn as rows.
        keys: the quantities to draw (base names without ``val_``); default all numeric keys except
            ``epoch``, ``step``, ``time``.
        log_scale: ``"auto"`` (log y-axis when a panel's values are all positive and span more than 50x),
            True or False.
        path: optional PNG path.

    Returns:
        The figure; each axes has title ``"<stage>: <key>"`` (or ``"<key>"``), x label ``"epoch"`` and a legend
        with ``train`` / ``val`` lines.

    Raises:
        ValueError: an empty or malformed history, or ``keys`` not in it.
    """
    stages = dict(history) if isinstance(history, Mapping) else {"": history}
    if not stages:
        raise ValueError("history is empty")
    parsed = {name: _history_series(h) for name, h in stages.items()}
    panels = []
    for name, (x, xlabel, series) in parsed.items():
        wanted = list(series) if keys is None else list(keys)
        missing = [k for k in wanted if k not in series]
        if missing:
            raise ValueError(f"keys {missing} not in history{f' {name!r}' if name else ''}; available: {list(series)}")
        panels += [(name, k, x, xlabel, series[k]) for k in wanted]
    rows, cols = _grid(len(panels), 4)
    fig = _new_figure(figsize=(3.6 * cols, 2.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (name, key, x, xlabel, parts) in zip(axes, panels, strict=False):
        for part, color in (("train", REAL_COLOR), ("val", GENERATED_COLOR)):
            if part in parts and np.any(np.isfinite(parts[part])):
                ok = np.isfinite(parts[part])
                ax.plot(x[ok], parts[part][ok], color=color, label=part, marker="." if ok.sum() < 30 else None)
        vals = np.concatenate([v[np.isfinite(v)] for v in parts.values()])
        use_log = log_scale is True or (
            log_scale == "auto" and vals.size and np.all(vals > 0) and vals.max() / vals.min() > 50
        )
        if use_log:
            ax.set_yscale("log")
        ax.set_title(f"{name}: {key}" if name else key)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize="small")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


# embeddings


def _umap_available() -> bool:
    try:
        import umap  # noqa: F401
    except Exception:
        return False
    return True


def _coords(ev: Evaluation, method: str, seed: int) -> tuple[dict[str, np.ndarray], tuple[str, str]]:
    sets = {"real": ev.real, "generated": ev.generated}
    if ev.control is not None:
        sets["control"] = ev.control
    if method == "auto":
        method = "umap" if _umap_available() else "pca"
    if method == "pca":
        ratio = np.asarray(ev.pca.explained_variance_ratio)
        labels = tuple(f"PC{i + 1} ({100 * ratio[i]:.1f}%)" if i < ratio.size else f"PC{i + 1}" for i in range(2))
        return {n: s.pcs[:, :2] if s.pcs.shape[1] >= 2 else np.pad(s.pcs, ((0, 0), (0, 1)))
                for n, s in sets.items()}, labels
    if method == "umap":
        if not _umap_available():
            raise ValueError("method='umap' needs umap-learn (pip install umap-learn); use method='pca'")
        import umap

        reducer = umap.UMAP(random_state=seed, n_components=2).fit(ev.real.pcs)
        return {n: reducer.embedding_ if n == "real" else reducer.transform(s.pcs)
                for n, s in sets.items()}, ("UMAP1", "UMAP2")
    raise ValueError(f"method must be one of ('pca', 'umap', 'auto'); got {method!r}")


def _condition_colors(ev: Evaluation) -> dict[str, tuple]:
    from matplotlib import colormaps

    values = sorted(set(ev.real.labels) | set(ev.generated.labels)) if ev.real.labels is not None else []
    cmap = colormaps["tab10" if len(values) <= 10 else "tab20"]
    return {v: cmap(i % cmap.N) for i, v in enumerate(values)}


def _subsample(n: int, max_points: int, rng) -> np.ndarray:
    return np.arange(n) if n <= max_points else np.sort(rng.choice(n, max_points, replace=False))


def embedding(
    evaluation: Evaluation,
    *,
    method: str = "pca",
    max_points: int = 5000,
    seed: int = 0,
    path=None,
) -> Figure:
    """Real vs generated cells in the real cells' PCA (or a UMAP of it), coloured by origin and by condition.

    Arguments:
        evaluation: the result of :func:`genjax.metrics.evaluate`.
        method: ``"pca"`` (the first two PCs of the evaluation's PCA), ``"umap"`` (UMAP fitted on the real
            cells' PCs and applied to the generated ones; needs umap-learn) or ``"auto"`` (UMAP when installed).
        max_points: at most this many random cells per set are drawn.
        path: optional PNG path.

    Returns:
        The figure: axes "real vs generated", and with conditions "real by <key>" and "generated by <key>"
        sharing limits and colours.
    """
    ev = _check_evaluation(evaluation)
    coords, (xl, yl) = _coords(ev, method, seed)
    rng = np.random.default_rng(seed)
    conditional = ev.real.labels is not None
    fig = _new_figure(figsize=(5.2 * (3 if conditional else 1), 4.6), layout="constrained")
    axes = fig.subplots(1, 3 if conditional else 1, squeeze=False, sharex=True, sharey=True).ravel()
    ax = axes[0]
    for name, color in (("real", REAL_COLOR), ("generated", GENERATED_COLOR)):
        c = coords[name]
        idx = _subsample(len(c), max_points, rng)
        ax.scatter(c[idx, 0], c[idx, 1], s=4, alpha=0.5, color=color, label=f"{name} ({len(c)})", rasterized=True)
    ax.set_title("real vs generated")
    ax.legend(markerscale=3, fontsize="small")
    if conditional:
        colors = _condition_colors(ev)
        for ax, name, s in ((axes[1], "real", ev.real), (axes[2], "generated", ev.generated)):
            c = coords[name]
            idx = _subsample(len(c), max_points, rng)
            for value, color in colors.items():
                sel = idx[s.labels[idx] == value]
                if sel.size:
                    ax.scatter(c[sel, 0], c[sel, 1], s=4, alpha=0.6, color=color, label=value, rasterized=True)
            ax.set_title(f"{name} by {ev.condition_key}")
        axes[2].legend(markerscale=3, fontsize="x-small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    for ax in axes:
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
    return _finish(fig, path)


# gene statistics

_STATS = (("log_mean", "gene mean (log1p)"), ("log_var", "gene variance (log1p)"), ("zero_frac", "zero fraction"))


def _stat_scatter(ax, ev: Evaluation, stat: str, label: str) -> None:
    r = ev.real.gene_stats[stat]
    if ev.control is not None:
        ax.scatter(r, ev.control.gene_stats[stat], s=3, alpha=0.35, color=CONTROL_COLOR, label="control",
                   rasterized=True)
    ax.scatter(r, ev.generated.gene_stats[stat], s=3, alpha=0.5, color=GENERATED_COLOR, label="generated",
               rasterized=True)
    lo = float(min(np.min(r), np.min(ev.generated.gene_stats[stat])))
    hi = float(max(np.max(r), np.max(ev.generated.gene_stats[stat])))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--")
    metric = f"pearson_{stat}"
    text = f"r = {ev.value(metric):.3f}"
    if ev.control is not None:
        text += f" (control {ev.value(metric, which='control'):.3f})"
    ax.set_title(f"{label}\n{text}", fontsize="medium")
    ax.set_xlabel(f"real {label}")
    ax.set_ylabel(f"generated {label}")
    ax.legend(markerscale=3, fontsize="x-small")


def gene_statistics(evaluation: Evaluation, *, path=None) -> Figure:
    """Per-gene log1p mean, log1p variance (of counts normalised to 1e4) and zero fraction: generated (and
    control, grey) against real, with the identity line and the Pearson r of each in the title.

    Returns:
        The figure with three axes titled by statistic.
    """
    ev = _check_evaluation(evaluation)
    fig = _new_figure(figsize=(13.5, 4.4), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, (stat, label) in zip(axes, _STATS, strict=True):
        _stat_scatter(ax, ev, stat, label)
    return _finish(fig, path)


# per-condition figures


def _fmt(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def condition_panels(evaluation: Evaluation, *, max_points: int = 2000, seed: int = 0, path=None) -> Figure:
    """One PCA panel per condition: the real and generated cells of that condition over all real cells (light
    grey), titled with the condition, cell counts, energy distance and k-NN accuracy (control in brackets).

    Raises:
        ValueError: the evaluation has no conditions.
    """
    ev = _check_evaluation(evaluation)
    conds = ev.conditions
    if not conds:
        raise ValueError("the evaluation has no per-condition breakdown (evaluate(..., condition_key=...))")
    rng = np.random.default_rng(seed)
    rows, cols = _grid(len(conds), 4)
    fig = _new_figure(figsize=(3.8 * cols, 3.5 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True).ravel()
    real, gen = ev.real.pcs, ev.generated.pcs
    bg = _subsample(len(real), max_points, rng)
    for ax, cond in zip(axes, conds, strict=False):
        ax.scatter(real[bg, 0], real[bg, 1], s=2, color="#dddddd", rasterized=True)
        r = np.flatnonzero(ev.real.labels == cond)
        g = np.flatnonzero(ev.generated.labels == cond)
        g = g[_subsample(len(g), max_points, rng)]
        ax.scatter(real[r, 0], real[r, 1], s=5, alpha=0.6, color=REAL_COLOR, label="real", rasterized=True)
        ax.scatter(gen[g, 0], gen[g, 1], s=5, alpha=0.6, color=GENERATED_COLOR, label="generated", rasterized=True)
        ed, knn = ev.value("energy_distance", cond), ev.value("knn_accuracy", cond)
        sub = f"ED {_fmt(ed, 2)}, kNN {_fmt(knn, 2)}"
        if ev.control is not None:
            sub += (f"\n(control ED {_fmt(ev.value('energy_distance', cond, 'control'), 2)}, "
                    f"kNN {_fmt(ev.value('knn_accuracy', cond, 'control'), 2)})")
        ax.set_title(f"{cond} ({len(r)} real / {np.sum(ev.generated.labels == cond)} gen.)\n{sub}", fontsize="small")
    axes[0].legend(markerscale=3, fontsize="x-small")
    for ax in axes[len(conds):]:
        ax.set_visible(False)
    return _finish(fig, path)


def condition_metrics(
    evaluation: Evaluation,
    *,
    metrics: Sequence[str] = ("energy_distance", "knn_accuracy", "label_accuracy", "pearson_log_mean"),
    path=None,
) -> Figure:
    """Bars of each metric per condition (and for all cells): generated beside control, with the ideal value as
    a dashed line. Metrics absent from the evaluation (e.g. label accuracy without conditions) are skipped.

    Returns:
        The figure with one axes per metric, titled with the metric's label.
    """
    ev = _check_evaluation(evaluation)
    present = [m for m in metrics if m in set(ev.table["metric"])]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(METRICS)}")
    groups = [ALL, *ev.conditions]
    rows, cols = _grid(len(present), 2)
    fig = _new_figure(figsize=(6.0 * cols, 0.35 * len(groups) * rows + 1.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    y = np.arange(len(groups))
    for ax, m in zip(axes, present, strict=False):
        gen = [ev.value(m, g) for g in groups]
        ax.barh(y - 0.2, gen, height=0.4, color=GENERATED_COLOR, label="generated")
        if ev.control is not None:
            ax.barh(y + 0.2, [ev.value(m, g, "control") for g in groups], height=0.4, color=CONTROL_COLOR,
                    label="control (real vs real)")
        ax.axvline(METRICS[m]["ideal"], color="k", ls="--", lw=0.8)
        ax.set_yticks(y, groups, fontsize="small")
        ax.invert_yaxis()
        ax.set_title(f"{METRICS[m]['label']} ({METRICS[m]['better']})")
    for ax in axes[len(present):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=2, fontsize="small")
    return _finish(fig, path)


# the 2 x 3 evaluation panel


def _hist(ax, sets: Sequence[SetSummary], attr: str, *, integer: bool, xlabel: str) -> None:
    values = [getattr(s, attr) for s in sets]
    hi = max(float(np.quantile(v, 0.999)) if v.size else 1.0 for v in values)
    if integer:
        bins = np.arange(0, max(int(math.ceil(hi)), 1) + 2) - 0.5
    else:
        bins = np.linspace(0.0, max(hi, 1e-6), 50)
    for s, v, color in zip(sets, values, (REAL_COLOR, GENERATED_COLOR), strict=False):
        ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, density=True, histtype="step", lw=1.5, color=color,
                label=s.name)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize="x-small")


def evaluation_panel(evaluation: Evaluation, *, max_points: int = 5000, seed: int = 0, path=None) -> Figure:
    """The seed notebook's 2 x 3 evaluation panel, real vs generated: count distribution, log1p distribution
    (counts normalised to 1e4; both from up to 300 random cells per set), gene means, gene variances, gene
    sparsity (generated and control against real, Pearson r in the titles) and the PCA overlay.

    Returns:
        The figure with six axes titled "count distribution", "log1p distribution", "gene mean (log1p)",
        "gene variance (log1p)", "zero fraction", "PCA".
    """
    ev = _check_evaluation(evaluation)
    fig = _new_figure(figsize=(15, 9), layout="constrained")
    axes = fig.subplots(2, 3)
    _hist(axes[0, 0], (ev.real, ev.generated), "count_values", integer=True, xlabel="count per gene and cell")
    axes[0, 0].set_title("count distribution")
    _hist(axes[0, 1], (ev.real, ev.generated), "log_values", integer=False, xlabel="log1p(normalised count)")
    axes[0, 1].set_title("log1p distribution")
    for ax, (stat, label) in zip((axes[0, 2], axes[1, 0], axes[1, 1]), _STATS, strict=True):
        _stat_scatter(ax, ev, stat, label)
    ax = axes[1, 2]
    rng = np.random.default_rng(seed)
    ratio = np.asarray(ev.pca.explained_variance_ratio)
    for s, color in ((ev.real, REAL_COLOR), (ev.generated, GENERATED_COLOR)):
        idx = _subsample(s.n_cells, max_points, rng)
        ax.scatter(s.pcs[idx, 0], s.pcs[idx, 1] if s.pcs.shape[1] > 1 else 0 * idx, s=4, alpha=0.5, color=color,
                   label=s.name, rasterized=True)
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}%)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}%)" if ratio.size > 1 else "PC2")
    text = f"ED {_fmt(ev.value('energy_distance'), 3)}, kNN {_fmt(ev.value('knn_accuracy'), 3)}"
    if ev.control is not None:
        text += (f"\n(control ED {_fmt(ev.value('energy_distance', which='control'), 3)}, "
                 f"kNN {_fmt(ev.value('knn_accuracy', which='control'), 3)})")
    ax.set_title(f"PCA\n{text}", fontsize="medium")
    ax.legend(markerscale=3, fontsize="x-small")
    return _finish(fig, path)


def save_all(
    evaluation: Evaluation,
    out_dir,
    *,
    history=None,
    method: str = "pca",
    dpi: int = 110,
) -> dict[str, Path]:
    """Write every applicable figure of ``evaluation`` (and ``history``) as PNGs into ``out_dir``.

    Arguments:
        evaluation: the result of :func:`genjax.metrics.evaluate`.
        out_dir: folder (created if missing).
        history: optional training history for :func:`training_curves` (list of dicts or ``{stage: list}``).
        method: embedding method for :func:`embedding`.
        dpi: resolution of the PNGs.

    Returns:
        ``{figure name: path}`` for ``evaluation_panel``, ``embedding``, ``gene_statistics``,
        ``condition_metrics`` and, with conditions, ``condition_panels``; ``training_curves`` with a history.
    """
    ev = _check_evaluation(evaluation)
    out = Path(out_dir)
    makers = {
        "evaluation_panel": lambda: evaluation_panel(ev),
        "embedding": lambda: embedding(ev, method=method),
        "gene_statistics": lambda: gene_statistics(ev),
        "condition_metrics": lambda: condition_metrics(ev),
    }
    if ev.conditions:
        makers["condition_panels"] = lambda: condition_panels(ev)
    if history is not None:
        makers["training_curves"] = lambda: training_curves(history)
    return {name: save_figure(make(), out / f"{name}.png", dpi=dpi) for name, make in makers.items()}


# latent traversals of a VAE

TraversalBase = Literal["mean", "median"]
TraversalScale = Literal["prior", "cells"]


class LatentTraversal(NamedTuple):
    """What :func:`latent_traversal` decoded; the returned figure carries it as ``figure.traversal``."""

    dims: np.ndarray
    """``(m,)`` int: the latent dimensions traversed, one panel each, in the order drawn."""
    values: np.ndarray
    """``(v,)`` float64: the offsets as given (in units of ``scale``)."""
    step: np.ndarray
    """``(m,)`` float64: the latent distance of an offset of 1 along each dimension (1 for ``scale="prior"``; the
    standard deviation of the cells' latent means along it for ``scale="cells"``)."""
    base: np.ndarray
    """``(n_latent,)`` float64: the latent point every traversal starts from."""
    latent: np.ndarray
    """``(m, v, n_latent)`` float64: the decoded points, ``base + values[i] * step[k]`` in dimension ``dims[k]``."""
    expression: np.ndarray
    """``(m, v, genes)`` float64: the decoded expression of every gene at those points: ``log1p(target_sum * rho)``
    (log-normalised expression, ``rho`` the decoded proportions) for count likelihoods, the decoded mean for a
    Gaussian model."""
    base_expression: np.ndarray
    """``(genes,)`` float64: the same, decoded at ``base``."""
    response: np.ndarray
    """``(m, genes)`` float64: ``max - min`` of each gene's expression along each dimension's traversal."""
    genes: list
    """``m`` lists of the gene names drawn in each panel (the largest ``response`` first, or as requested)."""


def _traversal_model(model):
    """The VAE-like object to decode with: ``model`` itself, or its ``.vae`` (LatentGenerator, HybridModel)."""
    needed = ("functions", "params", "var_names", "latent", "condition", "encode_conditions")
    for candidate in (model, getattr(model, "vae", None)):
        if candidate is not None and all(hasattr(candidate, a) for a in needed):
            return candidate
    missing = [a for a in needed if not hasattr(model, a)]
    raise TypeError(f"latent_traversal needs a genjax.VAE-like model (or one with a trained .vae); "
                    f"{type(model).__name__} lacks {missing}")


def _traversal_values(values) -> np.ndarray:
    v = np.asarray(np.linspace(-3.0, 3.0, 7) if values is None else values, dtype=np.float64)
    if v.ndim != 1 or v.size < 2:
        raise ValueError(f"values must be a 1-d sequence of at least 2 offsets; got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"values must be finite; got {float(v[~np.isfinite(v)][0])!r} at position "
                         f"{int(np.flatnonzero(~np.isfinite(v))[0])}")
    return v


def _traversal_dims(dims, n_latent: int) -> np.ndarray:
    if dims is None:
        return np.arange(n_latent)
    d = np.atleast_1d(np.asarray(dims))
    if d.ndim != 1 or d.size == 0 or not np.issubdtype(d.dtype, np.integer):
        raise ValueError(f"dims must be a non-empty sequence of latent dimension indices; got {dims!r}")
    bad = [int(i) for i in d if not 0 <= i < n_latent]
    if bad:
        raise ValueError(f"dims must be in [0, {n_latent}) (the model's n_latent is {n_latent}); got {bad[0]}")
    if len(set(d.tolist())) != d.size:
        raise ValueError(f"dims has a repeated dimension; got {d.tolist()}")
    return d.astype(np.int64)


def _traversal_base(base, z_cells, n_latent: int) -> np.ndarray:
    if isinstance(base, str):
        if base not in ("mean", "median"):
            raise ValueError(f"base must be 'mean', 'median' or a latent point of {n_latent} values; got {base!r}")
        return z_cells.mean(axis=0) if base == "mean" else np.median(z_cells, axis=0)
    b = np.asarray(base, dtype=np.float64)
    if b.shape != (n_latent,):
        raise ValueError(f"base must be 'mean', 'median' or a latent point of shape ({n_latent},); got shape "
                         f"{b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError(f"base must be finite; got {float(b[~np.isfinite(b)][0])!r} in dim "
                         f"{int(np.flatnonzero(~np.isfinite(b))[0])}")
    return b


def latent_traversal(
    model,
    adata=None,
    *,
    dims: Sequence[int] | None = None,
    values: Sequence[float] | None = None,
    genes: int | Sequence[str] = 8,
    base: TraversalBase | Sequence[float] = "mean",
    scale: TraversalScale = "prior",
    conditions: Mapping[str, str] | None = None,
    target_sum: float = 1e4,
    path=None,
) -> Figure:
    """Latent traversals of a trained VAE: move one latent dimension at a time away from a base point, decode, and
    draw the genes whose decoded expression responds most (one heatmap per dimension).

    For each dimension ``d`` in ``dims`` and offset ``t`` in ``values`` the latent point ``base + t * step_d * e_d``
    is decoded (under ``conditions``) into normalised expression ``rho`` (proportions summing to 1 over genes);
    the expression drawn is ``log1p(target_sum * rho)`` (log-normalised, as scanpy's ``normalize_total`` +
    ``log1p``), for a Gaussian model the decoded mean. A gene's response to ``d`` is the ``max - min`` of its
    expression along the traversal; each panel shows its ``genes`` most responsive genes (rows) against the offsets
    (columns), coloured by the change from the expression decoded at ``base`` (one symmetric colour scale for all
    panels, so dimensions are comparable). A dimension the decoder ignores (an inactive one of a beta-VAE) gives an
    empty-looking panel with a response near 0. This is the traversal figure of Higgins et al. 2017 ("beta-VAE:
    Learning Basic Visual Concepts with a Constrained Variational Framework", ICLR) for expression profiles.

    Arguments:
        model: a trained :class:`genjax.VAE`, or a model holding one as ``.vae`` (``LatentGenerator``,
            ``HybridModel``). Duck-typed: any object with ``latent(adata)`` (cells, n_latent), ``functions()``
            whose ``decode(params, z, log_lib, cond)`` returns ``log_scale`` (log proportions) or ``mean`` (cells,
            genes), ``params``, ``var_names``, ``encode_conditions(n, **values)`` and ``condition(codes)``.
        adata: the cells that set the base point and, for ``scale="cells"``, the step (default: the model's
            training data).
        dims: latent dimensions to traverse (default all).
        values: offsets from the base (default ``-3, -2, ..., 3``), in units of ``scale``.
        genes: how many of the most responsive genes to draw per dimension, or a list of gene names to draw in
            every panel.
        base: ``"mean"`` (default) or ``"median"`` of the cells' posterior means, or a latent point (n_latent,).
        scale: ``"prior"``: offsets in latent units, i.e. standard deviations of the ``N(0, I)`` prior (the
            usual beta-VAE traversal); ``"cells"``: in standard deviations of the cells' posterior means along
            each dimension (the spread the data actually use).
        conditions: a value for each of the model's categorical conditions (required when it has any), e.g.
            ``{"cell_type": "B cells"}``; continuous covariates are held at their training mean.
        target_sum: the library size of the log-normalisation (1e4: counts per 10k).
        path: optional PNG path.

    Returns:
        The figure: one axes per dimension titled ``"z<d>"`` with the largest response, y tick labels the gene
        names, x tick labels the offsets, and a colour bar. ``figure.traversal`` is the :class:`LatentTraversal`
        with the decoded arrays (every gene, not only those drawn).

    Raises:
        TypeError: ``model`` lacks the methods above.
        ValueError: ``values`` not a finite 1-d sequence of at least two offsets; ``dims`` out of range or
            repeated; ``base`` of the wrong shape or not finite; ``genes`` not a positive integer, or an empty
            list; a missing condition; ``scale`` or ``target_sum`` invalid.
        KeyError: a gene name not in the model's genes, or a condition the model does not have.
    """
    vae = _traversal_model(model)
    offsets = _traversal_values(values)
    scale = check_choice("scale", scale, TraversalScale)
    target_sum = check_range("target_sum", target_sum, low=0.0, low_open=True)
    var_names = [str(g) for g in vae.var_names]
    if isinstance(genes, str) or not isinstance(genes, Sequence | np.ndarray):
        n_show = min(check_int("genes", genes, low=1), len(var_names))
        chosen = None
    else:
        if len(genes) == 0:
            raise ValueError("genes is an empty list; give gene names or a number of genes")
        lookup = {g: i for i, g in enumerate(var_names)}
        unknown = [str(g) for g in genes if str(g) not in lookup]
        if unknown:
            raise KeyError(f"gene {unknown[0]!r} is not one of the model's {len(var_names)} genes")
        chosen = np.array([lookup[str(g)] for g in genes])
    conditions = dict(conditions or {})
    model_conditions = dict(getattr(vae, "conditions", {}) or {})
    unknown = [k for k in conditions if k not in model_conditions]
    if unknown:
        raise KeyError(f"{unknown[0]!r} is not a condition of this model (conditions: {list(model_conditions)})")
    missing = [k for k in model_conditions if k not in conditions]
    if missing:
        raise ValueError(f"the model decodes under its conditions {list(model_conditions)}; give a value for each as "
                         f"conditions={{...}}; missing {missing} (e.g. {missing[0]!r}: "
                         f"{list(model_conditions[missing[0]])[0]!r})")
    config_latent = getattr(getattr(vae, "config", None), "n_latent", None)
    needs_cells = isinstance(base, str) or scale == "cells" or config_latent is None
    z_cells = np.asarray(vae.latent(adata), np.float64) if needs_cells else None
    n_latent = int(config_latent) if config_latent is not None else z_cells.shape[1]
    start = _traversal_base(base, z_cells, n_latent)
    chosen_dims = _traversal_dims(dims, n_latent)
    step = z_cells[:, chosen_dims].std(axis=0) if scale == "cells" else np.ones(chosen_dims.size)

    m, v = chosen_dims.size, offsets.size
    points = np.broadcast_to(start, (m, v, n_latent)).copy()
    points[np.arange(m)[:, None], np.arange(v)[None, :], chosen_dims[:, None]] += offsets[None, :] * step[:, None]
    z = np.concatenate([points.reshape(m * v, n_latent), start[None]], axis=0).astype(np.float32)
    n = z.shape[0]
    cond = vae.condition(vae.encode_conditions(n, **conditions))
    out = vae.functions().decode(vae.params, z, np.full(n, math.log(target_sum), np.float32), cond)
    if "log_scale" in out:
        expr = np.log1p(target_sum * np.exp(np.asarray(out["log_scale"], np.float64)))
        label = f"change in log1p(expression per {target_sum:g}) from the base"
    else:
        expr = np.asarray(out["mean"], np.float64)
        label = "change in decoded mean from the base"
    base_expr, expr = expr[-1], expr[:-1].reshape(m, v, -1)
    response = expr.max(axis=1) - expr.min(axis=1)
    shown = [np.argsort(-r, kind="stable")[:n_show] if chosen is None else chosen for r in response]
    result = LatentTraversal(chosen_dims, offsets, step, start, points, expr, base_expr, response,
                             [[var_names[g] for g in idx] for idx in shown])

    deltas = [expr[k][:, idx].T - base_expr[idx][:, None] for k, idx in enumerate(shown)]  # genes x offsets
    vmax = max(float(np.max(np.abs(d))) for d in deltas) or 1.0
    rows, cols = _grid(m, 4)
    n_rows_panel = max(len(idx) for idx in shown)
    fig = _new_figure(figsize=(2.2 + 2.6 * cols, 0.6 + rows * (0.9 + 0.22 * n_rows_panel)), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    image = None
    for k, (ax, d, idx) in enumerate(zip(axes, chosen_dims, shown, strict=False)):
        image = ax.imshow(deltas[k], aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        ax.set_yticks(np.arange(len(idx)), [var_names[g] for g in idx], fontsize="x-small")
        ax.set_xticks(np.arange(v), [f"{t:g}" for t in offsets], fontsize="x-small")
        ax.set_xlabel(f"offset ({'prior sd' if scale == 'prior' else 'cell sd'})", fontsize="small")
        ax.set_title(f"z{int(d)}: range {float(response[k][idx].max()):.2f}", fontsize="medium")
    for ax in axes[m:]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes[:m].tolist(), shrink=0.8, label=label)
    fig.traversal = result
    return _finish(fig, path)
