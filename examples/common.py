"""Helpers shared by the example scripts of this folder: command line, run start and end, the summary files, figures,
and the PBMC3k data (loading, subsampling, the stratified train / held-out split).

The examples import it as ``from common import ...``. Python puts a script's folder first on ``sys.path`` when it
runs ``python examples/<name>.py``, and tests/test_examples.py puts this folder there before it loads an example, so
the import works both ways without installing anything.

Only the standard library and numpy are imported at module level: ``data_parallel.py`` must set ``XLA_FLAGS``
before JAX is first imported, so genjax (and with it JAX) and matplotlib are imported inside the helpers that use
them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["config_class", "config_from_args", "finish_run", "fit_latent_generator", "load_pbmc3k", "new_figure",
           "split_by_cell_type", "start_run", "write_summary"]

SMOKE_HELP = "tiny sizes and a few steps (the smoke test)"


# ---------------------------------------------------------------------------------------------------------------
# settings and command line


def config_class(script: str, **defaults) -> type:
    """The ``Config`` of an example: a frozen dataclass of its settings, each field typed by its default.

    The fields are ``out`` (the output folder; default ``out/<script name>`` next to the script, e.g.
    ``examples/out/sde_basics``) and ``seed`` (default 0), then one field per keyword of ``defaults`` in the order
    given (a keyword ``seed`` replaces its default).

    Arguments:
        script: the example's ``__file__``.
        defaults: ``name=default`` of each further setting; an ``int``, ``float``, ``str`` or ``bool``, which is
            then also the type of its command-line flag (:func:`config_from_args`).
    """
    script = Path(script).resolve()
    fields = {"out": str(script.parent / "out" / script.stem), "seed": 0, **defaults}
    return dataclasses.make_dataclass("Config", [(k, type(v), dataclasses.field(default=v)) for k, v in fields.items()],
                                      frozen=True)


def config_from_args(config_type, smoke: dict, full: dict, argv: Sequence[str] | None = None, *, doc: str,
                     smoke_help: str = SMOKE_HELP, check: Callable | None = None):
    """Parse the command line of an example into its frozen ``Config`` dataclass.

    Every field of the dataclass becomes a flag (``n_train`` -> ``--n-train``, of the field's type; a ``bool``
    field becomes ``--name`` / ``--no-name``). The value of a field is, by precedence: its flag where given, else
    the preset of ``--smoke`` (``smoke``) or ``--full`` (``full``) where one is chosen and names the field, else the
    dataclass default. ``--help`` lists each field with its default and both presets.

    Arguments:
        config_type: the example's ``Config`` dataclass (:func:`config_class`); every field has a default.
        smoke: field values of the ``--smoke`` preset (tiny sizes, a few steps: what the tests run).
        full: field values of the ``--full`` preset (the full-size run).
        argv: the arguments (``None``: ``sys.argv[1:]``).
        doc: the example's module docstring; its first paragraph is the ``--help`` description.
        smoke_help: the ``--help`` text of ``--smoke``.
        check: ``check(cfg)`` returns an error message for an invalid combination of values, or ``None``; a
            message ends the program as argparse does for a bad flag (usage and message on stderr, exit status 2).

    Returns:
        An instance of ``config_type``.
    """
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--smoke", action="store_true", help=smoke_help)
    p.add_argument("--full", action="store_true", help="the full-size run")
    fields = dataclasses.fields(config_type)
    for f in fields:
        kind = dict(action=argparse.BooleanOptionalAction) if isinstance(f.default, bool) else dict(type=type(f.default))
        p.add_argument("--" + f.name.replace("_", "-"), default=None, **kind,
                       help=f"default {f.default} (--smoke: {smoke.get(f.name, '=')}, --full: {full.get(f.name, '=')})")
    args = p.parse_args(argv)
    cfg = dataclasses.replace(config_type(), **(smoke if args.smoke else full if args.full else {}))
    cfg = dataclasses.replace(cfg, **{f.name: getattr(args, f.name) for f in fields if getattr(args, f.name) is not None})
    message = check(cfg) if check is not None else None
    if message:
        p.error(message)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# start and end of a run, the summary files


def start_run(out: str | Path) -> tuple[Path, float]:
    """Create the output folder ``out`` (and its parents), print the JAX backend and its devices.

    Returns:
        ``(out, t_start)``: the folder as a ``Path`` and ``time.perf_counter()`` at the start, for
        :func:`finish_run`.
    """
    import jax

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    print(f"JAX backend: {jax.default_backend()} ({jax.device_count()} device(s): {jax.devices()[0].device_kind})")
    return out, t_start


def write_summary(out: Path, summary: dict, title: str, body: Sequence[str] | None = None) -> None:
    """Write ``summary.json`` (the whole ``summary``, indented) and ``summary.md`` to the folder ``out``.

    ``summary.md`` is ``# title``, the line ``backend: <summary["backend"]>, <summary["seconds"]> s``, the body and
    the line ``figures: <summary["figures"], comma-separated>``, with blank lines between.

    Arguments:
        out: the output folder (it exists).
        summary: JSON-serialisable; needs the keys ``backend``, ``seconds`` and ``figures`` (file names).
        title: the heading of ``summary.md``.
        body: the lines between header and figures. ``None``: one line ``- path: value`` per number or string of
            ``summary`` outside ``config`` and ``figures``, nested keys joined by dots (``- part1.nfe: 500``),
            floats to 4 significant digits.
    """
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [f"# {title}", "", f"backend: {summary['backend']}, {summary['seconds']} s", ""]

    def walk(d, prefix=""):
        for k, v in d.items():
            if k in ("config", "figures"):
                continue
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                lines.append(f"- {prefix}{k}: {v:.4g}" if isinstance(v, float) else f"- {prefix}{k}: {v}")

    if body is None:
        walk(summary)
    else:
        lines += body
    lines += ["", "figures: " + ", ".join(summary["figures"]), ""]
    (out / "summary.md").write_text("\n".join(lines))


def finish_run(out: Path, summary: dict, figures: Sequence[Path], title: str, t_start: float) -> dict:
    """End a run: add ``figures`` (the file names) and ``seconds`` (since ``t_start``) to ``summary``, write it
    with :func:`write_summary` (default body) and print what was written.

    Arguments:
        out: the output folder.
        summary: the run's results; modified in place.
        figures: paths of the figures written.
        title: the heading of ``summary.md``.
        t_start: ``time.perf_counter()`` at the start of the run (from :func:`start_run`).

    Returns:
        ``summary``.
    """
    summary["figures"] = [Path(p).name for p in figures]
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    write_summary(out, summary, title)
    print(f"wrote {len(figures)} figures and summary.json / summary.md to {out} in {summary['seconds']:.0f} s")
    return summary


def new_figure(**kwargs):
    """A matplotlib ``Figure`` with the constrained layout; ``kwargs`` go to ``Figure`` (``figsize=...``).

    Made without pyplot: no global state, no display needed. Save it with ``genjax.plots.save_figure``.
    """
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# PBMC3k


def load_pbmc3k(seed: int = 0, max_cells: int = 0, n_genes: int = 0, *, keep_genes: Sequence[str] = (),
                min_type_cells: int = 0, like_cli: bool = False):
    """The bundled PBMC3k counts (``genjax.datasets.pbmc3k()``: 2638 cells x 2767 genes, ``obs["cell_type"]``),
    optionally subsampled and restricted to the most expressed genes, in this order:

    1. ``max_cells`` (0: all): keep about ``max_cells`` cells, stratified by cell type (``genjax.data.
       stratified_split`` with ``seed``): the held-out part of a split with ``test_fraction = max_cells / cells``
       and ``keep_both=True``, or with ``like_cli`` the training part of a split with ``test_fraction = 1 -
       max_cells / cells`` (what ``genjax``'s command line does for ``--n-cells``).
    2. ``n_genes`` (0: all): keep the ``n_genes`` genes of the largest mean count and the genes named in
       ``keep_genes``, in their original order.
    3. Drop cells without counts (every cell needs a library size).
    4. ``min_type_cells`` (0: skip): drop the cell types with fewer cells, so that each type left can have cells
       both in a training and a held-out part, and drop the unused categories of ``obs["cell_type"]``.

    Returns:
        An ``AnnData`` (a copy).
    """
    import genjax
    from genjax.data import stratified_split

    adata = genjax.datasets.pbmc3k()
    if max_cells and max_cells < adata.n_obs:
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        if like_cli:
            rows, _ = stratified_split(labels, 1.0 - max_cells / adata.n_obs, seed)
        else:
            _, rows = stratified_split(labels, max_cells / adata.n_obs, seed, keep_both=True)
        adata = adata[rows].copy()
    if n_genes and n_genes < adata.n_vars:
        mean = np.asarray(adata.X.mean(axis=0)).ravel()
        genes = np.union1d(np.argsort(-mean)[:n_genes], np.flatnonzero(np.isin(adata.var_names, list(keep_genes))))
        adata = adata[:, genes].copy()
    adata = adata[np.asarray(adata.X.sum(axis=1)).ravel() > 0].copy()
    if min_type_cells:
        counts = adata.obs["cell_type"].value_counts()
        adata = adata[adata.obs["cell_type"].isin(counts.index[counts >= min_type_cells])].copy()
        adata.obs["cell_type"] = adata.obs["cell_type"].cat.remove_unused_categories()
    return adata


def split_by_cell_type(adata, test_fraction: float, seed: int):
    """Split the cells of ``adata`` into training and held-out parts, stratified by ``obs["cell_type"]``.

    ``genjax.data.stratified_split(labels, test_fraction, seed, keep_both=True)``: each cell type is permuted
    with ``numpy.random.default_rng(seed)`` (types in sorted order) and ``min(max(1, round(test_fraction * n)),
    n - 1)`` of its ``n >= 2`` cells are held out (none of a type of one cell).

    Returns:
        ``(train, test)``: two ``AnnData`` copies, cells in their original order.
    """
    from genjax.data import stratified_split

    labels = adata.obs["cell_type"].astype(str).to_numpy()
    train_rows, test_rows = stratified_split(labels, test_fraction, seed, keep_both=True)
    return adata[train_rows].copy(), adata[test_rows].copy()


def fit_latent_generator(train, *, prior: str, seed: int, n_latent: int, vae_epochs: int, vae_train_size: float,
                         prior_steps: int, prior_hidden: int, prior_blocks: int, **kwargs):
    """Fit ``genjax.LatentGenerator`` on ``train``, conditioned on ``obs["cell_type"]``, with the examples' recipe.

    The count VAE has an NB decoder and ``n_latent`` latent dimensions; it trains ``vae_epochs`` epochs on the
    fraction ``vae_train_size`` of the cells (the rest validates each epoch) with the KL term warmed up over the
    first third of the epochs. The prior (``prior``: ``"diffusion"`` or ``"flow"``) is a field network of
    ``prior_blocks`` blocks of width ``prior_hidden``, trained ``prior_steps`` steps, 250 steps per dispatch.

    Arguments:
        train: ``AnnData`` of counts with ``obs["cell_type"]``.
        seed: seed of the initialisation and of the training.
        kwargs: further arguments of ``genjax.LatentGenerator`` (``space``, ``decoder_conditions``,
            ``cond_dropout``, ...).

    Returns:
        The fitted generator; ``fit`` runs without a progress bar.
    """
    import genjax

    gen = genjax.LatentGenerator(
        train, likelihood="nb", prior=prior, conditions=["cell_type"], seed=seed, vae_kwargs={"n_latent": n_latent},
        prior_kwargs={"n_hidden": prior_hidden, "n_layers": prior_blocks, "steps_per_dispatch": min(prior_steps, 250)},
        **kwargs)
    gen.fit(vae_epochs=vae_epochs, prior_steps=prior_steps, seed=seed, progress=False,
            vae_fit_kwargs={"kl_warmup_epochs": max(1, vae_epochs // 3), "train_size": vae_train_size})
    return gen
