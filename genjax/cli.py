"""The ``genjax`` command: ``demo``, ``train``, ``generate``, ``predict``, ``evaluate``.

``genjax demo`` is the main job: on the bundled PBMC3k it splits the cells 80/20 stratified by cell type, trains
the cell-type-conditional latent generator on the 80%, generates as many cells per cell type as the held-out 20%
has, evaluates them against the held-out cells beside a real-vs-real control (the training cells), and writes
``report.md`` with tables and figures, ``generated.h5ad`` and the model to the output folder. ``genjax <command>
--help`` says what each command reads and writes.

Exit status: 0 on success; 2 for a usage problem, before anything is computed: a bad flag or value, an input file
that is missing or unreadable, data that do not fit (non-integer counts, a missing ``obs`` key or layer), settings
that do not match a checkpoint; 1 for a failure while computing (a diverged training run, a late write error);
130 when interrupted. An error is one line naming the flag or file (``--debug`` shows the traceback instead);
hints name the command's flags (``--layer counts``), not the Python keywords of the library underneath. A
warning is one line, ``genjax: warning: ...``.

Training: checkpoints are written to ``OUT.ckpt/`` beside the model folder while ``genjax train`` runs (so that
``--resume`` can continue an interrupted run); after a successful run they are removed, or moved into
``OUT/checkpoints/`` with ``--keep-checkpoints``. ``OUT/train.json`` records how the model was trained (the command,
the data, the layer and the gene selection of ``--n-top-genes``), which ``generate`` and ``predict`` read.

Compiled XLA programs are kept in a persistent compilation cache (``$XDG_CACHE_HOME/genjax/jax`` or
``~/.cache/genjax/jax``), so that a second command on the same model does not compile again; ``--no-compilation-cache``
or ``GENJAX_NO_COMPILATION_CACHE=1`` turns it off, and ``JAX_COMPILATION_CACHE_DIR`` chooses another folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

from ._version import __version__
from .data import stratified_split

__all__ = ["main", "build_parser", "compilation_cache_dir"]

_state = {"quiet": False}  # --quiet of the command in progress
_TRAIN_RECORD = "train.json"  # in a model folder written by genjax train
_KEPT_CHECKPOINTS = "checkpoints"  # in a model folder, with --keep-checkpoints


class UsageError(Exception):
    """A flag, value or input file the command cannot use (exit status 2)."""


def _log(msg: str) -> None:
    if not _state["quiet"]:
        print(f"[genjax {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- argparse value types (argparse names the flag in its error; exit status 2) -------------------------------------


def _int_at_least(minimum: int):
    """argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}; got {value}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _finite_float(text: str) -> float:
    """argparse type: a finite real number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return value


# -- messages: library keywords -> command-line flags -----------------------------------------------------------------

_FLAG_OF = {"layer": "--layer", "likelihood": "--likelihood", "prior": "--prior", "prior_clusters": "--prior-clusters",
            "vae_epochs": "--vae-epochs", "max_epochs": "--vae-epochs", "prior_steps": "--prior-steps",
            "n_top_genes": "--n-top-genes", "guidance": "--guidance", "n_per_cell": "--n-per-cell",
            "perturbation_key": "--perturbation-key", "control": "--control", "covariate_keys": "--covariate-key",
            "conditions": "--condition-key", "condition_key": "--condition-key", "predictor": "--predictor",
            "method": "--method", "seed": "--seed", "resume": "--resume", "restart": "--restart",
            "level": "--interval", "batch_key": "--hvg-batch-key"}
_NO_CLI_EQUIVALENT = (  # hints about library options the commands do not offer
    r",? or (?:use )?likelihood=['\"]gaussian['\"](?: for normali[sz]ed data)?",  # the commands train count models
    r",? or check_counts=False[^.;]*",
)
_KEYWORD = re.compile(r"\b([a-z_]+)=('[^']*'|\"[^\"]*\"|\[\.\.\.\]|[\w.+\-]+)")


def _keyword_to_flag(m: re.Match) -> str:
    name, value = m.group(1), m.group(2).strip("'\"")
    if name not in _FLAG_OF:
        return m.group(0)
    flag = _FLAG_OF[name]
    if value == "True":
        return flag
    if value == "False":
        return f"no {flag}"
    if value in ("...", "[...]"):
        return f"{flag} {flag.rsplit('-', 1)[-1].upper()}"  # layer=... -> --layer LAYER
    return f"{flag} {value}"


def _cli_text(text: str) -> str:
    """A library message in the command's words: ``layer='counts'`` -> ``--layer counts``, ``restart=True (CLI
    --restart)`` -> ``--restart``; hints about options the commands do not offer are dropped."""
    text = re.sub(r"\b\w+=[^\s,;()]+ \(CLI (--[^)]+)\)", r"\1", text)
    text = re.sub(r"\(\w+=[^,()]+, CLI (--[^)]+)\)", r"(\1)", text)
    for pattern in _NO_CLI_EQUIVALENT:
        text = re.sub(pattern, "", text)
    text = _KEYWORD.sub(_keyword_to_flag, text)
    return re.sub(r"^([a-z_]+)(?= must\b)", lambda m: _FLAG_OF.get(m.group(1), m.group(1)), text)


def _input_error(err: Exception, flag: str, path, adata=None, layer: str | None = None) -> UsageError:
    """A data error of the input ``flag path`` as a :class:`UsageError` naming the file; a count error of ``X``
    lists the file's layers (scanpy files keep raw counts in a layer such as ``counts``)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = re.sub(r"^(real|generated|control|train)(?=[: ])", "", text).lstrip(": ")
    text = re.sub(r"adata\.layers\[(['\"])(.*?)\1\]", r"layer \2", text).replace("adata.X", "X")
    if adata is not None and layer is None and "raw counts" in text and len(adata.layers):
        text = text.rstrip(".") + f". {Path(path).name} has the layers {', '.join(adata.layers.keys())} (choose one with --layer)"
    return UsageError(f"{flag} {path}: {text}")


@contextlib.contextmanager
def _about_input(flag: str, path, adata=None, layer: str | None = None):
    """Report a ``KeyError`` / ``ValueError`` raised by the block (a model checking its data) as a data problem of
    the input ``flag path`` (:func:`_input_error`); checkpoint and perturbation-label errors pass unchanged."""
    from .data import UnknownPerturbationError
    from .training import FingerprintMismatchError

    try:
        yield
    except (FingerprintMismatchError, UnknownPerturbationError):
        raise
    except (KeyError, ValueError) as err:
        raise _input_error(err, flag, path, adata, layer) from None


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of the command: one line, in the command's words, each message once."""
    text = _cli_text(" ".join(str(message).split()))
    if text in _state.setdefault("warned", set()):
        return
    _state["warned"].add(text)
    print(f"genjax: warning: {text}", file=sys.stderr, flush=True)


# -- compilation cache -------------------------------------------------------------------------------------------------


def compilation_cache_dir(disabled: bool = False, environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder of the command's persistent JAX compilation cache, or ``None`` when it is off.

    Arguments:
        disabled: ``--no-compilation-cache`` was given.
        environ: the environment (default ``os.environ``).

    Returns:
        ``None`` when ``disabled`` or ``GENJAX_NO_COMPILATION_CACHE`` is set to anything but ``""``, ``0``,
        ``false`` or ``no``; else ``$JAX_COMPILATION_CACHE_DIR`` when set (the user's own JAX setting), else
        ``$XDG_CACHE_HOME/genjax/jax``, else ``~/.cache/genjax/jax``.
    """
    env = os.environ if environ is None else environ
    if disabled or env.get("GENJAX_NO_COMPILATION_CACHE", "").strip().lower() not in ("", "0", "false", "no"):
        return None
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(env["JAX_COMPILATION_CACHE_DIR"])
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "genjax" / "jax"


def _use_compilation_cache(args) -> None:
    """Point JAX's persistent compilation cache at :func:`compilation_cache_dir` (every compiled program, however
    small or fast to compile, is kept: the CPU compiles that a command repeats take 0.1 s to a few seconds each)."""
    path = compilation_cache_dir(args.no_compilation_cache)
    if path is None:
        return
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)  # JAX trusts its cache: keep it private
    except OSError as err:
        warnings.warn(f"no compilation cache: cannot create {path} ({err.strerror or err}); pass "
                      "--no-compilation-cache to silence this", stacklevel=2)
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


# -- inputs and outputs ------------------------------------------------------------------------------------------------


def _parse_conditions(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--condition expects KEY=VALUE; got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def _read_h5ad(path: str, flag: str):
    """The AnnData at ``path``, or a :class:`UsageError` naming the flag and why the file cannot be read."""
    import anndata as ad

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag} {p}: no such file" + (" (a folder)" if p.is_dir() else ""))
    try:
        return ad.read_h5ad(p)
    except Exception as err:  # h5py / anndata raise many types for text, CSV or truncated files
        raise UsageError(f"{flag} {p}: not a readable .h5ad file ({type(err).__name__}: {str(err)[:160]})") from None


def _counts_in(adata, layer: str | None, flag: str, path, target: str | None = None):
    """``adata`` with the counts of ``layer`` moved to ``X`` (or to ``layers[target]``, where a model reads them);
    ``adata`` itself when ``layer`` is ``None``.

    Raises:
        UsageError: ``layer`` is not a layer of the file (naming the layers it has).
    """
    import anndata as ad

    if layer is None:
        return adata
    if layer not in adata.layers:
        have = ", ".join(adata.layers.keys()) or "none"
        raise UsageError(f"--layer {layer}: {flag} {path} has no such layer (layers: {have})")
    counts = adata.layers[layer]
    out = ad.AnnData(X=counts, obs=adata.obs, var=adata.var)
    if target is not None:
        out.layers[target] = counts
    return out


def _writable_dir(path: Path, flag: str) -> None:
    """Check that the folder ``path`` can be created and written (nothing is left behind).

    Raises:
        UsageError: naming the flag, the path and the reason.
    """
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".genjax-write-check-"):
            pass
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write in {existing} ({err.strerror or err})") from None


def _model_dir(path: str) -> Path:
    model = Path(path)
    if not model.is_dir():
        raise UsageError(f"--model {model}: no such model folder" + (" (a file)" if model.exists() else ""))
    return model


def _model_format(model: Path) -> str:
    try:
        return json.loads((model / "model.json").read_text()).get("format", "")
    except (OSError, ValueError):
        return ""


def _train_record(model: Path) -> dict:
    """``model/train.json`` (written by ``genjax train``), or ``{}``."""
    try:
        return json.loads((model / _TRAIN_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def _write_h5ad(adata, out: Path) -> None:
    """Write ``adata`` to ``out`` atomically (a temporary file beside it, then a rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    adata.write_h5ad(tmp)
    tmp.replace(out)


def _with_provenance(adata, args, model: Path, **fields):
    """``adata`` with integer ``obs["library_size"]`` and ``uns["genjax"]``: the genjax version, the command, the
    model folder and its format, how the model was trained (data, layer, gene selection) and ``fields``
    (seed, guidance, conditions, ...)."""
    import numpy as np

    if "library_size" in adata.obs:  # totals of integer counts, stored as integers
        adata.obs["library_size"] = np.rint(np.asarray(adata.obs["library_size"], np.float64)).astype(np.int64)
    record = _train_record(model)
    selection = record.get("gene_selection")
    info = {"genjax_version": __version__, "command": args.command_line, "model": str(model.resolve()),
            "model_format": _model_format(model), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "training_data": str(record.get("data", "")), "training_layer": str(record.get("layer") or "X"),
            "gene_selection": (f"{selection['method']} top {selection['n_top_genes']} genes"
                               if selection else "all genes of the training data")}
    for key, value in fields.items():
        info[key] = {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else value
    adata.uns["genjax"] = info
    return adata


# -- training ------------------------------------------------------------------------------------------------------


def _checkpoints(out: Path) -> Path:
    """The checkpoint folder of a training run: ``<out>.ckpt`` beside the model folder."""
    return out.parent / (out.name + ".ckpt")


def _open_checkpoints(out: Path, args) -> bool:
    """Bring the checkpoints kept in ``OUT/checkpoints`` by ``--keep-checkpoints`` back to ``OUT.ckpt`` for
    ``--resume`` / ``--restart``; returns whether they were moved.

    Raises:
        UsageError: kept checkpoints and neither ``--resume`` nor ``--restart`` (a new run would lose them).
    """
    kept, ckpt = out / _KEPT_CHECKPOINTS, _checkpoints(out)
    if not kept.is_dir() or ckpt.exists():
        return False
    if not (args.resume or args.restart):
        raise UsageError(f"--out {out} already holds the checkpoints of its training run ({kept}); pass --resume to "
                         "continue it, or --restart to move them aside and start afresh")
    os.replace(kept, ckpt)
    return True


def _close_checkpoints(out: Path, args, success: bool, moved: bool) -> None:
    """After the run: with ``--keep-checkpoints`` move ``OUT.ckpt`` into ``OUT/checkpoints``; else remove this
    run's checkpoints (those that ``--restart`` moved aside, ``*.replaced-*``, stay in ``OUT.ckpt``). A failed run
    leaves them where ``--resume`` finds them."""
    ckpt = _checkpoints(out)
    if not ckpt.is_dir():
        return
    if not success:
        if not any(p.is_file() for p in ckpt.rglob("*")):  # the run failed before its first checkpoint
            shutil.rmtree(ckpt, ignore_errors=True)
        elif moved and out.is_dir() and not (out / _KEPT_CHECKPOINTS).exists():
            os.replace(ckpt, out / _KEPT_CHECKPOINTS)
        return
    if args.keep_checkpoints:
        shutil.rmtree(out / _KEPT_CHECKPOINTS, ignore_errors=True)
        os.replace(ckpt, out / _KEPT_CHECKPOINTS)
        _log(f"kept the training checkpoints in {out / _KEPT_CHECKPOINTS}")
        return
    earlier = [p for p in ckpt.iterdir() if ".replaced-" in p.name]
    for p in ckpt.iterdir():
        if p not in earlier:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    if earlier:
        _log(f"the earlier checkpoints that --restart moved aside stay in {ckpt}")
    else:
        ckpt.rmdir()


def _select_genes(adata, args):
    """``(adata, selection)``: with ``--n-top-genes N`` the ``N`` most variable genes by
    :func:`genjax.data.highly_variable_genes` (Seurat v3 on the counts of ``--layer``) and a record of them, else
    ``(adata, None)``."""
    if args.n_top_genes is None:
        return adata, None
    from .data import highly_variable_genes

    with _about_input("--data", args.data, adata, args.layer):
        highly_variable_genes(adata, n_top_genes=args.n_top_genes, layer=args.layer, batch_key=args.hvg_batch_key)
    keep = adata.var["highly_variable"].to_numpy()
    genes = [str(g) for g in adata.var_names[keep]]
    _log(f"--n-top-genes {args.n_top_genes}: {len(genes)} of {adata.n_vars} genes selected (seurat_v3 on "
         f"{'layer ' + args.layer if args.layer else 'X'}{', within ' + args.hvg_batch_key if args.hvg_batch_key else ''})")
    return adata[:, keep].copy(), {"method": "seurat_v3", "n_top_genes": args.n_top_genes, "layer": args.layer,
                                   "batch_key": args.hvg_batch_key, "genes": genes}


def _generator(adata, args):
    """The (unfitted) latent generator of ``genjax train`` / ``genjax demo``."""
    import genjax

    return genjax.LatentGenerator(adata, likelihood=args.likelihood, prior=args.prior or "diffusion",
                                  conditions=args.condition_key, layer=getattr(args, "layer", None),
                                  prior_clusters=args.prior_clusters, seed=args.seed)


def _fit_generator(gen, args, checkpoint_dir: Path | None):
    gen.fit(vae_epochs=args.vae_epochs, prior_steps=args.prior_steps, seed=args.seed, progress=not args.quiet,
            checkpoint_dir=checkpoint_dir, resume=getattr(args, "resume", False),
            restart=getattr(args, "restart", False))
    return gen


def _save_model(model, out: Path) -> Path:
    """Save ``model`` to ``out`` (atomically); if that fails, save it to a folder in the temporary directory and
    say where, so that a trained model is never lost to a late I/O error.

    Raises:
        RuntimeError: the save to ``out`` failed (the message names the folder the model was saved to instead).
    """
    try:
        model.save(out)
        return out
    except OSError as err:
        rescue = Path(tempfile.mkdtemp(prefix="genjax-rescued-")) / "model"
        model.save(rescue)
        raise RuntimeError(f"could not write the model to {out} ({err.strerror or err}); the trained model was saved "
                           f"to {rescue} instead") from None


def _hybrid_predictor(args) -> str | None:
    """The predictor of a hybrid model (``--predictor``, or the older ``--hybrid PREDICTOR``), ``None`` when the
    command trains no hybrid model."""
    old = args.hybrid if isinstance(args.hybrid, str) else None
    if old is not None and args.predictor is not None and old != args.predictor:
        raise UsageError(f"--hybrid {old} and --predictor {args.predictor}: give the predictor once, with --predictor")
    predictor = args.predictor or old
    if args.hybrid is None and predictor is None:
        return None
    if predictor is None:
        raise UsageError("--hybrid needs --predictor NAME or PATH (additive, mean-delta, linear, regressor, ..., or "
                         "a .csv / .npy of predicted mean log1p profiles)")
    return predictor


def cmd_train(args) -> int:
    out = Path(args.out)
    predictor = _hybrid_predictor(args)
    if args.perturbation_key is None and (args.control is not None or args.covariate_key) and predictor is None:
        raise UsageError("--control and --covariate-key train a perturbation model: give --perturbation-key too")
    if args.perturbation_key is not None and args.control is None:
        raise UsageError("--perturbation-key needs --control (the label of control cells)")
    if predictor is not None and not args.condition_key:
        raise UsageError("--hybrid needs --condition-key (the obs keys whose values make a condition; repeatable)")
    if args.hvg_batch_key is not None and args.n_top_genes is None:
        raise UsageError("--hvg-batch-key ranks genes for --n-top-genes: give --n-top-genes N too")
    if predictor is not None and (args.resume or args.restart or args.keep_checkpoints):
        raise UsageError("--resume, --restart and --keep-checkpoints: a hybrid model trains without checkpoints")
    _writable_dir(out, "--out")
    _writable_dir(_checkpoints(out), "--out (its checkpoint folder OUT.ckpt)")
    moved = predictor is None and _open_checkpoints(out, args)
    success = False
    try:
        data = _read_h5ad(args.data, "--data")
        adata, selection = _select_genes(data, args)
        if predictor is not None:
            model = _fit_hybrid(adata, data, predictor, args)
        else:
            with _about_input("--data", args.data, data, args.layer):
                model = (_perturbation_model(adata, args) if args.perturbation_key is not None
                         else _generator(adata, args))
            if args.perturbation_key is not None:
                _fit_perturbation_model(model, adata, args, _checkpoints(out))
            else:
                _fit_generator(model, args, _checkpoints(out))
        _save_model(model, out)
        success = True
    finally:
        if predictor is None:
            _close_checkpoints(out, args, success, moved)
    record = {"command": args.command_line, "genjax_version": __version__, "data": str(Path(args.data).resolve()),
              "layer": args.layer, "cells": adata.n_obs, "genes": adata.n_vars, "gene_selection": selection,
              "checkpoints": _KEPT_CHECKPOINTS if (out / _KEPT_CHECKPOINTS).is_dir() else None}
    tmp = out / f".{_TRAIN_RECORD}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(out / _TRAIN_RECORD)
    _log(f"saved the model to {out}")
    return 0


def _perturbation_model(adata, args):
    """The (unfitted) perturbation model of ``genjax train --perturbation-key``."""
    import genjax

    return genjax.PerturbationModel(adata, perturbation_key=args.perturbation_key, control=args.control,
                                    covariate_keys=tuple(args.covariate_key or ()), method=args.method,
                                    likelihood=args.likelihood, layer=args.layer, seed=args.seed)


def _fit_perturbation_model(pm, adata, args, checkpoint_dir: Path):
    t0 = time.perf_counter()
    pm.fit(max_epochs=args.vae_epochs, seed=args.seed, progress=not args.quiet, checkpoint_dir=checkpoint_dir,
           resume=args.resume, restart=args.restart)
    conditions = pm.spec.conditions(adata)
    _log(f"trained a {args.method} perturbation model on {adata.n_obs} cells ({len(conditions)} conditions) in "
         f"{time.perf_counter() - t0:.0f} s")
    return pm


def _predictor_table(predictor: str, data, keys: list[str]):
    """A baseline name (``-`` or ``_``), ``"regressor"``, or a table read from ``PATH.csv`` / ``PATH.npy`` (a
    DataFrame: index condition labels ``"v1 | v2"``, columns genes).

    A ``.npy`` holds a float array ``(conditions, genes)``. Its rows are the training conditions of ``--data`` in
    the sorted order of their labels, unless ``PATH.conditions.txt`` (beside it, one label per line) names them
    (then it may include conditions that are not in the training data); its columns are the genes of ``--data``
    in file order (before ``--n-top-genes``), unless ``PATH.genes.txt`` names them.

    Raises:
        UsageError: an unknown name, a missing or unreadable file, or an array of the wrong shape.
    """
    import numpy as np
    import pandas as pd

    from .models import BASELINES

    name = predictor.replace("-", "_")
    if name in BASELINES or name == "regressor":
        return name
    path = Path(predictor)
    if path.suffix not in (".csv", ".npy"):
        names = ", ".join(n.replace("_", "-") for n in (*BASELINES, "regressor"))
        raise UsageError(f"--predictor {predictor}: a predictor name ({names}) or a .csv / .npy of predicted mean "
                         "log1p profiles")
    if not path.is_file():
        raise UsageError(f"--predictor {path}: no such file")
    try:
        if path.suffix == ".csv":
            table = pd.read_csv(path, index_col=0)
            table.index = table.index.astype(str)
            return table
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UsageError(f"--predictor {path}: not readable ({type(err).__name__}: {str(err)[:160]})") from None
    rows_file, genes_file = path.with_suffix(".conditions.txt"), path.with_suffix(".genes.txt")
    if rows_file.is_file():
        rows = [line.strip() for line in rows_file.read_text().splitlines() if line.strip()]
    else:
        rows = sorted({" | ".join(v) for v in data.obs[keys].astype(str).to_numpy()})
    genes = ([line.strip() for line in genes_file.read_text().splitlines() if line.strip()] if genes_file.is_file()
             else [str(g) for g in data.var_names])
    if values.ndim != 2 or values.shape != (len(rows), len(genes)):
        raise UsageError(f"--predictor {path}: shape {values.shape}; expected ({len(rows)}, {len(genes)}) (conditions "
                         f"{'of ' + rows_file.name if rows_file.is_file() else 'of --data in sorted label order'}, "
                         f"genes {'of ' + genes_file.name if genes_file.is_file() else 'of --data'})")
    return pd.DataFrame(values, index=rows, columns=genes)


def _fit_hybrid(adata, data, predictor: str, args):
    import genjax

    missing = [k for k in args.condition_key if k not in data.obs.columns]
    if missing:
        raise UsageError(f"--condition-key {missing[0]}: not an obs column of --data {args.data} (obs: "
                         f"{', '.join(map(str, data.obs.columns))})")
    table = _predictor_table(predictor, data, args.condition_key)
    if isinstance(table, str) and table != "regressor" and args.perturbation_key is None:
        raise UsageError(f"--predictor {predictor} is a perturbation baseline: give --perturbation-key and --control")
    residual = args.prior or "flow"
    with _about_input("--data", args.data, data, args.layer):
        hm = genjax.HybridModel(adata, table, args.condition_key, residual=residual, likelihood=args.likelihood,
                                perturbation_key=args.perturbation_key, control=args.control, layer=args.layer,
                                seed=args.seed)
    t0 = time.perf_counter()
    hm.fit(max_epochs=args.vae_epochs, prior_steps=args.prior_steps, seed=args.seed, progress=not args.quiet)
    _log(f"trained a hybrid model ({hm.predictor.name} + residual {residual}) on {adata.n_obs} cells "
         f"({len(hm.train_conditions)} conditions) in {time.perf_counter() - t0:.0f} s")
    return hm


# -- generate, predict -------------------------------------------------------------------------------------------------


def cmd_generate(args) -> int:
    import genjax

    out = Path(args.out)
    _writable_dir(out.parent, "--out")
    model = _model_dir(args.model)
    fmt = _model_format(model)
    if fmt and not fmt.startswith("genjax.LatentGenerator"):
        raise UsageError(f"--model {model}: a {fmt.split('/')[0]} model; genjax generate needs a "
                         "latent generator (genjax train without --perturbation-key / --hybrid); use genjax predict")
    gen = genjax.LatentGenerator.load(model)
    conditions = _parse_conditions(args.condition)
    t0 = time.perf_counter()
    adata = gen.generate(args.n, seed=args.seed, guidance=args.guidance, **conditions)
    _write_h5ad(_with_provenance(adata, args, model, seed=args.seed, n=args.n,
                                 guidance=1.0 if args.guidance is None else args.guidance,
                                 conditions=conditions), out)
    _log(f"wrote {adata.n_obs} generated cells to {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _predict_hybrid(model: Path, out: Path, args) -> int:
    import numpy as np

    import genjax

    if not args.condition:
        raise UsageError("a hybrid model predicts a condition: give --condition KEY=VALUE for each condition key")
    hm = genjax.HybridModel.load(model)
    cond = _parse_conditions(args.condition)
    cells = hm.sample(cond, args.n, seed=args.seed)
    if args.interval is not None:
        lo, hi = hm.predict_interval(cond, args.interval, "cell", seed=args.seed)
        cells.layers["lower"] = np.broadcast_to(lo.to_numpy()[0], cells.shape).astype(np.float32)
        cells.layers["upper"] = np.broadcast_to(hi.to_numpy()[0], cells.shape).astype(np.float32)
        mlo, mhi = hm.predict_interval(cond, args.interval, "mean")
        cells.varm["mean_interval"] = np.stack([mlo.to_numpy()[0], mhi.to_numpy()[0]], 1).astype(np.float32)
        cells.uns["interval_level"] = args.interval
    extra = {} if args.interval is None else {"interval": args.interval}
    _write_h5ad(_with_provenance(cells, args, model, seed=args.seed, n=args.n, conditions=cond, **extra), out)
    extra = f" with {args.interval:g} intervals (layers lower / upper, varm mean_interval)" if args.interval else ""
    _log(f"wrote {cells.n_obs} cells of {cond} to {out}{extra}")
    return 0


def cmd_predict(args) -> int:
    import genjax

    out = Path(args.out)
    _writable_dir(out.parent, "--out")
    model = _model_dir(args.model)
    if args.interval is not None and not 0.0 < args.interval < 1.0:
        raise UsageError(f"--interval must lie in (0, 1); got {args.interval}")
    fmt = _model_format(model)
    if fmt.startswith("genjax.HybridModel"):
        return _predict_hybrid(model, out, args)
    if fmt and not fmt.startswith("genjax.PerturbationModel"):
        raise UsageError(f"--model {model}: a {fmt.split('/')[0]} model; genjax predict needs a perturbation or "
                         "hybrid model (genjax train --perturbation-key / --hybrid); use genjax generate")
    if args.data is None or args.perturbation is None:
        raise UsageError("a perturbation model predicts from control cells: give --data and --perturbation")
    pm = genjax.PerturbationModel.load(model)
    data = _read_h5ad(args.data, "--data")
    source = _counts_in(data, args.layer, "--data", args.data, target=pm.options["layer"])
    genes = (_train_record(model).get("gene_selection") or {}).get("genes") or list(pm.var_names)
    if set(genes) != set(map(str, source.var_names)):
        missing = [g for g in genes if g not in set(map(str, source.var_names))]
        if missing:
            raise UsageError(f"--data {args.data}: lacks {len(missing)} of the model's {len(genes)} genes (first: "
                             f"{', '.join(missing[:3])})")
        _log(f"using the model's {len(genes)} genes of the {source.n_vars} in --data")
        source = source[:, genes].copy()
    with _about_input("--data", args.data, data, args.layer):
        pred = pm.predict(source, args.perturbation, n_per_cell=args.n_per_cell, seed=args.seed)
    _write_h5ad(_with_provenance(pred, args, model, seed=args.seed, perturbation=args.perturbation,
                                 n_per_cell=args.n_per_cell, source=str(Path(args.data).resolve())), out)
    rules = ", ".join(f"{k}: {v}" for k, v in pred.uns["perturbation_rule"].items())
    _log(f"wrote {pred.n_obs} predicted cells of {args.perturbation} to {out} (shift {rules})")
    return 0


# -- evaluate ----------------------------------------------------------------------------------------------------------


def _common_genes(reference, inputs: dict, generated_flag: str):
    """``inputs`` (flag -> AnnData) restricted to the genes of ``reference`` (the generated / predicted cells)
    when those are a proper subset of theirs (a model trained with ``--n-top-genes``)."""
    genes = [str(g) for g in reference.var_names]
    out = {}
    for flag, adata in inputs.items():
        if set(genes) < set(map(str, adata.var_names)):
            _log(f"scoring the {len(genes)} genes of {generated_flag} (of the {adata.n_vars} in {flag})")
            adata = adata[:, genes].copy()
        out[flag] = adata
    return out


def cmd_evaluate(args) -> int:
    if args.perturbation_key is not None:
        return _evaluate_perturbations(args)
    if args.covariate_key or args.train:
        raise UsageError("--covariate-key and --train evaluate perturbation predictions: give --perturbation-key "
                         "and --control too")
    from genjax import report

    out = Path(args.out)
    _writable_dir(out, "--out")
    files = {"--real": args.real, "--generated": args.generated, "--control": args.control}
    read = {flag: _read_h5ad(path, flag) for flag, path in files.items() if path is not None}
    real = _counts_in(read["--real"], args.layer, "--real", args.real)
    generated = read["--generated"]
    control = _counts_in(read["--control"], args.layer, "--control", args.control) if args.control else None
    inputs = _common_genes(generated, {"--real": real, **({"--control": control} if control is not None else {})},
                           "--generated")
    real, control = inputs["--real"], inputs.get("--control", "split")
    try:
        ev, _ = report.evaluate_and_report(real, generated, out, control=control, condition_key=args.condition_key,
                                           title="genjax evaluation", seed=args.seed)
    except (KeyError, ValueError) as err:
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        which = next((f for f in ("--real", "--generated", "--control") if text.startswith(f[2:])), None)
        if which is None:
            raise
        raise _input_error(err, which, files[which], read[which] if which != "--generated" else None,
                           args.layer) from None
    _log(f"wrote {out / 'report.md'}")
    print(ev.table.to_string(index=False))
    return 0


_HEADLINE = ("pearson_delta_ctrl", "pearson_delta_ref", "l2_top", "cosine_logfc", "rank_cosine_logfc",
             "r2_mean_deg", "pearson2_mean_deg", "r2_logfc_deg", "deg_recall_100", "energy_distance",
             "interaction_corr")


def _evaluate_perturbations(args) -> int:
    import genjax
    from genjax.data import PerturbationSpec

    if args.control is None:
        raise UsageError("--perturbation-key needs --control (the label of control cells)")
    if args.condition_key is not None:
        raise UsageError("--condition-key is for generated cells; with --perturbation-key use --covariate-key")
    out = Path(args.out)
    _writable_dir(out, "--out")
    spec = PerturbationSpec(args.perturbation_key, args.control, tuple(args.covariate_key or ()))
    real = _counts_in(_read_h5ad(args.real, "--real"), args.layer, "--real", args.real)
    predicted = _read_h5ad(args.generated, "--generated")
    train = _counts_in(_read_h5ad(args.train, "--train"), args.layer, "--train", args.train) if args.train else None
    inputs = _common_genes(predicted, {"--real": real, **({"--train": train} if train is not None else {})},
                           "--generated")
    real, train = inputs["--real"], inputs.get("--train")
    table = genjax.metrics.evaluate_predicted_perturbations(real, predicted, spec, train=train, seed=args.seed)
    summary = genjax.metrics.summarise(table)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame, index in (("perturbation_metrics.csv", table, False), ("perturbation_summary.csv", summary,
                                                                            True)):
        tmp = out / f".{name}.tmp"
        frame.to_csv(tmp, index=index)
        tmp.replace(out / name)
    n_cond = table["condition"].nunique()
    print(f"mean over {n_cond} condition(s); 'model' = --generated, baselines fitted on "
          f"{'--train' if train is not None else 'nothing (no --train)'}; ceiling = split-half real vs real")
    cols = [c for c in _HEADLINE if c in summary.columns]
    print(summary[cols].to_string(float_format=lambda v: f"{v:.3f}"))
    _log(f"wrote {out / 'perturbation_metrics.csv'} (per condition) and {out / 'perturbation_summary.csv'}")
    return 0


# -- demo --------------------------------------------------------------------------------------------------------------


def _demo_data(args):
    """PBMC3k (or a stratified subsample of ``--n-cells``) split 80/20 by cell type: ``(train, test)``."""
    import genjax

    adata = genjax.datasets.pbmc3k()
    key = "cell_type"
    n_types = adata.obs[key].nunique()
    if args.n_cells is not None and args.n_cells < 10 * n_types:
        raise UsageError(f"--n-cells {args.n_cells}: the demo needs at least {10 * n_types} cells (10 per cell type "
                         f"of the {n_types} in PBMC3k)")
    if args.n_cells and args.n_cells < adata.n_obs:  # a quick run on a stratified subsample
        keep, _ = stratified_split(adata.obs[key], 1.0 - args.n_cells / adata.n_obs, seed=args.seed)
        adata = adata[keep].copy()
    train_idx, test_idx = stratified_split(adata.obs[key], 0.2, seed=args.seed)
    _log(f"PBMC3k: {adata.n_obs} cells x {adata.n_vars} genes; {len(train_idx)} training / {len(test_idx)} "
         f"held-out cells, split stratified by {key}")
    return adata[train_idx].copy(), adata[test_idx].copy()


def cmd_demo(args) -> int:
    import jax
    import numpy as np

    from genjax import report

    out = Path(args.out)
    _writable_dir(out, "--out")
    t0 = time.perf_counter()
    _log(f"JAX backend: {jax.default_backend()} ({jax.device_count()} device(s))")
    key = "cell_type"
    train, test = _demo_data(args)
    args.condition_key = [key]
    gen = _generator(train, args)
    _fit_generator(gen, args, None)
    _log(f"trained the VAE and the {args.prior or 'diffusion'} prior in {time.perf_counter() - t0:.0f} s")
    out.mkdir(parents=True, exist_ok=True)
    _save_model(gen, out / "model")
    t1 = time.perf_counter()
    generated = gen.generate(test.n_obs, seed=args.seed, guidance=args.guidance,
                             **{key: np.asarray(test.obs[key]).astype(str)})
    counts = ", ".join(f"{c}: {n}" for c, n in generated.obs[key].value_counts().items())
    _log(f"generated {generated.n_obs} cells ({counts}) in {time.perf_counter() - t1:.1f} s")
    _write_h5ad(_with_provenance(generated, args, out / "model", seed=args.seed, guidance=args.guidance,
                                 conditions={key: "the cell types of the held-out cells"},
                                 training_data="bundled PBMC3k, the 80% training split"), out / "generated.h5ad")
    _log("evaluating against the held-out cells (control: the training cells) ...")
    # the control: training cells of the cell types that have held-out cells (a tiny subsample can leave a rare
    # type with training cells only)
    control = train[train.obs[key].astype(str).isin(set(test.obs[key].astype(str)))].copy()
    ev, _ = report.evaluate_and_report(test, generated, out, control=control, condition_key=key,
                                       history=gen.history.get("vae") or None, seed=args.seed,
                                       title="genjax demo: PBMC3k cell-type-conditional latent generation")
    summary = {**_summary(ev), "seconds": round(time.perf_counter() - t0, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _log(f"overall: energy distance {summary['energy_distance']:.3f} (control {summary['energy_distance_control']:.3f}), "
         f"5-NN accuracy {summary['knn_accuracy']:.3f} (control {summary['knn_accuracy_control']:.3f}), "
         f"label accuracy {summary['label_accuracy']:.3f} (control {summary['label_accuracy_control']:.3f})")
    _log(f"wrote {out / 'report.md'}, {out / 'generated.h5ad'} and {out / 'model'} in {summary['seconds']:.0f} s")
    return 0


def _summary(ev) -> dict:
    """Overall metric values of an evaluation (generated and control) as a flat dict."""
    rows = ev.table[ev.table["condition"] == "all"]
    out = {}
    for _, r in rows.iterrows():
        out[r["metric"]] = float(r["generated"])
        out[r["metric"] + "_control"] = float(r["control"])
    return out


# -- the parser --------------------------------------------------------------------------------------------------------

_EXIT = """\
exit status: 0 done; 2 usage error (a flag, value or input file), found before any compute; 1 failure
while computing; 130 interrupted. Compiled programs are cached in $XDG_CACHE_HOME/genjax/jax (or
~/.cache/genjax/jax): --no-compilation-cache or GENJAX_NO_COMPILATION_CACHE=1 turns that off."""
_DESCRIPTIONS = {
    "demo": """\
The main job, on the bundled PBMC3k (2638 cells, 8 cell types): split the cells 80/20 stratified by cell
type, train a cell-type-conditional latent generator (NB count VAE + diffusion prior on its latents) on the
80%, generate as many cells per cell type as the held-out 20% has, and evaluate them against the held-out
cells beside a real-vs-real control (the training cells).

writes, in --out:
  report.md, *.png     tables and figures of the evaluation
  generated.h5ad       the generated counts: X (cells x genes), obs cell_type and library_size (integer),
                       uns["genjax"] provenance (version, model, seed, guidance, conditions, command)
  summary.json         the overall metrics beside the control, and the run time
  model/               the trained model (genjax generate --model OUT/model)""",
    "train": """\
Train a model on a .h5ad of raw counts (in X, or in the layer --layer):
  * a latent generator (default; conditions from --condition-key) for genjax generate;
  * a perturbation model (--perturbation-key, --control) for genjax predict --data --perturbation;
  * a hybrid model (--hybrid --predictor NAME|PATH, --condition-key) for genjax predict --condition.

writes:
  OUT/                 the model folder (model.json, parameters as .msgpack)
  OUT/train.json       how it was trained: command, data, layer, the genes chosen by --n-top-genes
  OUT.ckpt/            training checkpoints while the run lasts (--resume continues an interrupted run); removed
                       after a successful run, or moved to OUT/checkpoints/ with --keep-checkpoints""",
    "generate": """\
Generate cells from a latent generator (genjax train without --perturbation-key / --hybrid). Conditions not
given with --condition are drawn in their training proportions, jointly with the library size.

writes --out (.h5ad): X sampled counts (cells x the model's genes), obs the conditions (one column per
condition key), library_size (integer total counts drawn from training cells) and uns["genjax"] (genjax
version, command, model folder, seed, guidance, conditions, training data and gene selection).""",
    "predict": """\
Predict cells with a perturbation model (from the control cells in --data, under --perturbation) or a
hybrid model (--n cells of the condition given by --condition KEY=VALUE, with --interval bounds).

writes --out (.h5ad): X predicted counts (cells x the model's genes), layers["mean"] their expected values,
obs the perturbation / condition columns, library_size (integer) and, from a perturbation model,
source_cell; uns["genjax"] provenance (version, command, model, seed, perturbation or conditions). With
--interval L: layers lower / upper (integer per-gene bounds for a new cell) and varm mean_interval (bounds
of the condition's mean log1p).""",
    "evaluate": """\
Score generated cells against real cells (two-sample metrics beside a real-vs-real control, overall and
per --condition-key value), or, with --perturbation-key, predicted perturbed cells per condition beside
baselines fitted on --train. Genes are matched by name; when --generated holds a subset of the genes of
--real (a model trained with --n-top-genes), the real cells are scored on those genes.

writes, in --out: report.md with tables and figures (generation; the table is also printed), or
perturbation_metrics.csv (per condition and method) and perturbation_summary.csv (means; printed).""",
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=30, width=min(shutil.get_terminal_size().columns, 110))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``genjax`` command (exit status 2 on a bad flag, as every usage error)."""
    p = argparse.ArgumentParser(prog="genjax", description="Generative models of gene-expression counts (JAX). "
                                "'genjax COMMAND --help' says what a command reads and writes.", epilog=_EXIT,
                                formatter_class=_Formatter)
    p.add_argument("--version", action="version", version=f"genjax-counts {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str):
        q = sub.add_parser(name, help=summary, description=_DESCRIPTIONS[name], epilog=_EXIT, formatter_class=_Formatter)
        return q

    def common(q, quiet: str = "no progress or log lines (errors and warnings still go to stderr)"):
        q.add_argument("--quiet", action="store_true", help=quiet)
        q.add_argument("--no-compilation-cache", action="store_true",
                       help="do not use the persistent JAX compilation cache ($XDG_CACHE_HOME/genjax/jax or "
                       "~/.cache/genjax/jax; also off with GENJAX_NO_COMPILATION_CACHE=1)")
        q.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    def seed(q, what: str):
        q.add_argument("--seed", type=int, default=0, help=f"seed of {what}; default 0")

    def model_args(q):
        q.add_argument("--likelihood", default="nb", choices=["nb", "zinb", "poisson"],
                       help="count model of the VAE decoder: negative binomial, zero-inflated NB, Poisson (default nb; "
                       "a hybrid model takes nb or poisson)")
        q.add_argument("--prior", default=None, choices=["diffusion", "flow"],
                       help="latent prior family (default diffusion; flow for a hybrid model's residual)")
        q.add_argument("--vae-epochs", type=_positive_int, default=None, metavar="N",
                       help="VAE training epochs (default: scvi-tools' rule, min(400, round(20000 / cells x 400)))")
        q.add_argument("--prior-steps", type=_positive_int, default=4000, metavar="N",
                       help="optimizer steps of the latent prior (default 4000)")
        q.add_argument("--prior-clusters", type=_non_negative_int, default=0, metavar="K",
                       help="also condition the prior on K k-means clusters of the latents (no labels needed; "
                       "default 0: off)")
        seed(q, "the initialisation, the data order and every draw")

    d = command("demo", "bundled PBMC3k end to end: train, generate, evaluate, report")
    d.add_argument("--out", default="genjax-demo", metavar="DIR", help="output folder (default genjax-demo)")
    d.add_argument("--guidance", type=_finite_float, default=1.0, metavar="W",
                   help="classifier-free guidance weight of generation (default 1: the plain conditional model)")
    d.add_argument("--n-cells", type=_positive_int, default=None, metavar="N",
                   help="use a stratified subsample of N cells (a quick run; default: all 2638)")
    model_args(d)
    common(d)
    d.set_defaults(func=cmd_demo)

    t = command("train", "train a latent generator, perturbation model or hybrid model on a .h5ad of raw counts")
    t.add_argument("--data", required=True, metavar="FILE.h5ad", help="training cells: raw integer counts in X or "
                   "in the layer --layer (cells x genes)")
    t.add_argument("--out", required=True, metavar="DIR", help="the model folder to write (replaced if it exists)")
    t.add_argument("--layer", default=None, help="read the counts from this layer of --data (e.g. counts, the "
                   "scanpy convention when X is normalised; default X)")
    t.add_argument("--n-top-genes", type=_positive_int, default=None, metavar="N",
                   help="train on the N most variable genes (Seurat v3 on the counts of --layer, as scanpy's "
                   "flavor='seurat_v3'); recorded in OUT/train.json (default: all genes)")
    t.add_argument("--hvg-batch-key", default=None, metavar="KEY",
                   help="with --n-top-genes: rank the genes within each batch of this obs key and combine the ranks")
    t.add_argument("--condition-key", action="append", default=None, metavar="KEY",
                   help="obs key of a condition to generate by (repeatable; a hybrid model's conditions are the "
                   "combinations of these keys' values)")
    t.add_argument("--perturbation-key", default=None, metavar="KEY",
                   help="obs key of perturbation labels: train a perturbation model (combinations joined by '+')")
    t.add_argument("--control", default=None, metavar="LABEL",
                   help="with --perturbation-key: the label of control cells")
    t.add_argument("--covariate-key", action="append", default=None, metavar="KEY",
                   help="with --perturbation-key: obs key of a covariate the response depends on (repeatable)")
    t.add_argument("--method", default="compositional", choices=["compositional", "scgen"],
                   help="with --perturbation-key: the latent response estimator (default compositional)")
    t.add_argument("--hybrid", nargs="?", const=True, default=None, metavar="PREDICTOR",
                   help="train a hybrid model: the mean predictor of --predictor wrapped in a residual count model "
                   "(--prior) over the conditions of --condition-key ('--hybrid NAME' is the older form of "
                   "'--hybrid --predictor NAME')")
    t.add_argument("--predictor", default=None, metavar="NAME|PATH",
                   help="the hybrid model's mean predictor (implies --hybrid): additive, mean-delta, linear (with "
                   "--perturbation-key / --control; also no-change, control-mean, noncontrol-mean, matching-mean), "
                   "regressor (a regression from condition values), PATH.csv of mean log1p profiles (one row per "
                   "condition label 'v1 | v2', one column per gene), or PATH.npy (conditions x genes: rows the "
                   "conditions of --data in sorted label order unless PATH.conditions.txt lists them, columns the "
                   "genes of --data unless PATH.genes.txt lists them)")
    resume = t.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue the run whose checkpoints are in OUT.ckpt (or OUT/checkpoints); only a run "
                        "with the same settings and data")
    resume.add_argument("--restart", action="store_true",
                        help="move the checkpoints of an earlier run aside (kept in OUT.ckpt) and start afresh")
    t.add_argument("--keep-checkpoints", action="store_true",
                   help="after a successful run, keep the training checkpoints in OUT/checkpoints (default: remove "
                   "them; an interrupted run always keeps them in OUT.ckpt for --resume)")
    model_args(t)
    common(t, "no progress bars or log lines (errors and warnings still go to stderr)")
    t.set_defaults(func=cmd_train)

    g = command("generate", "generate cells from a trained latent generator")
    g.add_argument("--model", required=True, metavar="DIR", help="a model folder written by genjax train")
    g.add_argument("--n", type=_positive_int, required=True, help="number of cells to generate")
    g.add_argument("--out", required=True, metavar="FILE.h5ad", help="the .h5ad to write")
    g.add_argument("--condition", action="append", default=None, metavar="KEY=VALUE",
                   help="generate cells of this condition value (repeatable, one per condition key; the others are "
                   "drawn in training proportions)")
    g.add_argument("--guidance", type=_finite_float, default=None, metavar="W",
                   help="classifier-free guidance weight (default 1: the plain conditional model; 0: unconditional; "
                   ">1 sharper conditions)")
    seed(g, "every draw (conditions, library sizes, latents, counts)")
    common(g)
    g.set_defaults(func=cmd_generate)

    r = command("predict", "predict perturbed cells from control cells, or a hybrid model's cells and intervals")
    r.add_argument("--model", required=True, metavar="DIR", help="a perturbation model folder (genjax train "
                   "--perturbation-key) or a hybrid model folder (genjax train --hybrid)")
    r.add_argument("--data", default=None, metavar="FILE.h5ad", help="perturbation model: control cells (raw "
                   "counts) to predict from; genes matched by name to the model's")
    r.add_argument("--layer", default=None, help="perturbation model: read the counts of --data from this layer "
                   "(default: where the model read its training counts)")
    r.add_argument("--perturbation", default=None, metavar="LABEL", help="perturbation model: a perturbation "
                   "label, combinations joined by '+'")
    r.add_argument("--condition", action="append", default=None, metavar="KEY=VALUE",
                   help="hybrid model: the condition's value of each condition key (repeatable)")
    r.add_argument("--n", type=_positive_int, default=2000, help="hybrid model: cells to sample (default 2000)")
    r.add_argument("--interval", type=float, default=None, metavar="LEVEL",
                   help="hybrid model: also write per-gene bounds at this level in (0, 1) (layers lower / upper: "
                   "integer bounds for a new cell; varm mean_interval: bounds of the condition's mean log1p)")
    r.add_argument("--out", required=True, metavar="FILE.h5ad", help="the .h5ad of predicted counts to write")
    r.add_argument("--n-per-cell", type=_positive_int, default=1, metavar="N",
                   help="perturbation model: predicted cells per source cell (default 1)")
    seed(r, "every draw")
    common(r)
    r.set_defaults(func=cmd_predict)

    e = command("evaluate", "evaluate generated cells, or predicted perturbed cells, against real cells")
    e.add_argument("--real", required=True, metavar="FILE.h5ad", help="real cells (raw counts in X or --layer); "
                   "with --perturbation-key the observed perturbed cells and the controls of the same covariates")
    e.add_argument("--generated", required=True, metavar="FILE.h5ad",
                   help="generated or predicted cells (counts in X, as genjax generate / predict write them)")
    e.add_argument("--control", default=None, metavar="FILE.h5ad|LABEL",
                   help="without --perturbation-key: a second real .h5ad as the control (default: split --real in "
                   "halves); with it: the label of control cells")
    e.add_argument("--condition-key", default=None, metavar="KEY",
                   help="obs key to evaluate generated cells per condition (and score label accuracy)")
    e.add_argument("--perturbation-key", default=None, metavar="KEY", help="obs key of perturbation labels: "
                   "score predicted perturbations (combinations joined by '+')")
    e.add_argument("--covariate-key", action="append", default=None, metavar="KEY",
                   help="with --perturbation-key: obs key of a covariate (cell type, line; repeatable)")
    e.add_argument("--train", default=None, metavar="FILE.h5ad", help="with --perturbation-key: training cells "
                   "the baselines (no_change, mean_delta, additive, matching_mean, linear) are fitted on")
    e.add_argument("--layer", default=None, help="layer of --real, --control and --train holding the raw counts "
                   "(e.g. counts for scanpy files with normalised X; default X); --generated is read from X")
    e.add_argument("--out", default="genjax-eval", metavar="DIR", help="output folder (default genjax-eval)")
    seed(e, "the control split, subsampling and PCA")
    common(e, "no log lines (the result table is still printed; errors and warnings go to stderr)")
    e.set_defaults(func=cmd_evaluate)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the ``genjax`` command; returns the exit status (0 success, 1 failure while computing, 2 usage error,
    130 interrupted; argparse exits with 2 itself on a bad flag)."""
    from .data import UnknownPerturbationError
    from .training import FingerprintMismatchError

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["genjax", *argv])
    _state.update(quiet=args.quiet, warned=set())
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning  # a warning is one line, not a source excerpt
            _use_compilation_cache(args)
            return args.func(args)
    except (UsageError, FingerprintMismatchError, UnknownPerturbationError, KeyError, ValueError,
            FileNotFoundError) as err:
        if args.debug:
            raise
        text = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"genjax {args.command}: error: {_cli_text(str(text))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"genjax {args.command}: interrupted" + (f" (--resume continues from {_checkpoints(Path(args.out))})"
                                                       if args.command == "train" else ""), file=sys.stderr)
        return 130
    except Exception as err:  # CheckpointLockedError, TrainingDivergedError, a late OSError, ...
        if args.debug:
            raise
        print(f"genjax {args.command}: failed: {type(err).__name__}: {_cli_text(str(err))}", file=sys.stderr)
        return 1
    finally:
        _state.update(quiet=False)


if __name__ == "__main__":
    sys.exit(main())
