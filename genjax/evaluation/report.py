"""``genjax.report``: a markdown report of an evaluation, with figures, written atomically into a folder.

::

    ev, path = genjax.report.evaluate_and_report(heldout, generated, "out/", condition_key="cell_type",
                                                  control=train, history={"vae": h1, "prior": h2})
    # or, from an existing evaluation:
    genjax.report.write_report(ev, "out/", history=h1)

The folder receives ``report.md`` (metric tables with the real-vs-real control beside every value, overall and
per condition, the figures embedded as relative links, the conventions and notes), ``figures/*.png``,
``metrics.csv`` (the tidy table) and ``metrics.json`` (:meth:`Evaluation.to_dict`). Each file is written to a
temporary name and renamed into place, and ``report.md`` is written last, so a reader never sees a partial report
or a report whose figures are missing. Other files in the folder (a model, generated ``.h5ad``) are left alone.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from . import plots
from ._evaluate import ALL, METRICS, Evaluation, evaluate

__all__ = ["write_report", "evaluate_and_report", "markdown_tables", "overall_table", "condition_table"]


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~plots._umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    align = align or ["---"] + ["--:"] * (len(header) - 1)
    return "\n".join([_row(header), _row(align), *(_row(r) for r in rows)])


def _metrics_of(ev: Evaluation) -> list[str]:
    present = set(ev.table["metric"])
    return [m for m in METRICS if m in present]


def overall_table(evaluation: Evaluation) -> str:
    """Markdown table of every metric over all cells: generated, control (real vs real), ideal, direction."""
    ev = evaluation
    rows = []
    for m in _metrics_of(ev):
        rows.append([METRICS[m]["label"], _fmt(ev.value(m)),
                     _fmt(ev.value(m, which="control")) if ev.control is not None else "n/a",
                     _fmt(METRICS[m]["ideal"]), METRICS[m]["better"]])
    return _table(["metric", "generated", "control (real vs real)", "ideal", "better"], rows,
                  ["---", "--:", "--:", "--:", "---"])


def condition_table(evaluation: Evaluation) -> str:
    """Markdown table with one row per condition (and all cells): cell counts, then ``generated (control)`` for
    every metric. Empty string when the evaluation has no conditions."""
    ev = evaluation
    if not ev.conditions:
        return ""
    metrics = _metrics_of(ev)
    t = ev.table
    rows = []
    for cond in [ALL, *ev.conditions]:
        sub = t[t["condition"] == cond]
        first = sub.iloc[0]
        counts = [str(int(first["n_real"])), str(int(first["n_generated"]))]
        if ev.control is not None:
            counts.append(str(int(first["n_control"])))
        cells = []
        for m in metrics:
            g = ev.value(m, cond)
            cells.append(f"{_fmt(g)} ({_fmt(ev.value(m, cond, 'control'))})" if ev.control is not None else _fmt(g))
        rows.append([cond, *counts, *cells])
    header = ["condition", "n real", "n generated"] + (["n control"] if ev.control is not None else [])
    header += [METRICS[m]["label"] for m in metrics]
    return _table(header, rows)


def markdown_tables(evaluation: Evaluation) -> str:
    """The overall and per-condition tables as markdown (what ``genjax evaluate`` can print)."""
    parts = ["### All cells", "", overall_table(evaluation)]
    per = condition_table(evaluation)
    if per:
        parts += ["", f"### Per condition ({evaluation.condition_key})", "",
                  "Each cell: generated (control)." if evaluation.control is not None else "", "", per]
    return "\n".join(parts)


def _figure(name: str, paths: Mapping[str, Path], out: Path, caption: str) -> list[str]:
    if name not in paths:
        return []
    rel = paths[name].relative_to(out).as_posix()
    return [f"![{caption}]({rel})", ""]


def write_report(
    evaluation: Evaluation,
    out_dir,
    *,
    history=None,
    title: str = "genjax evaluation",
    description: str | None = None,
    figures: bool = True,
    embedding_method: str = "pca",
    dpi: int = 110,
) -> Path:
    """Write ``report.md``, ``figures/*.png``, ``metrics.csv`` and ``metrics.json`` into ``out_dir``.

    Arguments:
        evaluation: the result of :func:`genjax.metrics.evaluate`.
        out_dir: the output folder (created if missing; other files in it are kept).
        history: optional training history (list of per-epoch dicts, or ``{stage: list}``) for the training
            curves figure.
        title: the report's heading.
        description: optional paragraph under the heading (e.g. the model and data used).
        figures: draw the figures (False: tables only).
        embedding_method: ``"pca"``, ``"umap"`` or ``"auto"`` for the embedding figure.
        dpi: resolution of the figures.

    Returns:
        The path of ``report.md``.

    Raises:
        TypeError: ``evaluation`` is not an :class:`~genjax.metrics.Evaluation`.
    """
    if not isinstance(evaluation, Evaluation):
        raise TypeError(f"expected a genjax.metrics.Evaluation; got {type(evaluation).__name__}")
    ev = evaluation
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = plots.save_all(ev, out / "figures", history=history, method=embedding_method, dpi=dpi) if figures else {}

    csv_text = ev.table.to_csv(index=False)
    _atomic_write_text(out / "metrics.csv", csv_text)
    _atomic_write_text(out / "metrics.json", json.dumps(ev.to_dict(), indent=2, default=str) + "\n")

    s = ev.settings
    lines = [f"# {title}", ""]
    if description:
        lines += [description, ""]
    lines += [
        f"- real (reference) cells: {s['n_real']}; generated cells: {s['n_generated']}; "
        f"control cells: {s['n_control'] or 'none'}; genes: {s['n_genes']}",
        f"- control: {s['control']}",
        f"- space: {s['preprocessing']}; PCA with {s['pca']}",
    ]
    if ev.condition_key:
        lines.append(f"- conditions: `{ev.condition_key}` ({len(ev.conditions)} with generated cells)")
    lines += ["", "## All cells", "",
              "Generated cells and control cells are each compared with the same real cells; the control shows "
              "the value two samples of real cells reach under the same protocol and sample sizes.", "",
              overall_table(ev), ""]
    lines += _figure("evaluation_panel", paths, out, "evaluation panel: count and log1p distributions, gene "
                     "means, variances and sparsity, PCA overlay")
    lines += _figure("embedding", paths, out, "real vs generated cells in the real cells' PCA")
    lines += _figure("gene_statistics", paths, out, "gene statistics, generated and control against real")
    per = condition_table(ev)
    if per:
        lines += [f"## Per condition (`{ev.condition_key}`)", ""]
        if ev.control is not None:
            lines += ["Each entry: generated (control).", ""]
        lines += [per, ""]
        lines += _figure("condition_metrics", paths, out, "metrics per condition, generated vs control")
        lines += _figure("condition_panels", paths, out, "PCA per condition")
    elif "condition_metrics" in paths:
        lines += _figure("condition_metrics", paths, out, "metrics, generated vs control")
    if "training_curves" in paths:
        lines += ["## Training", ""]
        lines += _figure("training_curves", paths, out, "training curves")
    if ev.notes or (ev.table["note"] != "").any():
        lines += ["## Notes", ""]
        lines += [f"- {n}" for n in ev.notes]
        t = ev.table
        for cond in dict.fromkeys(t.loc[t["note"] != "", "condition"]):
            lines.append(f"- {cond}: {t.loc[t['condition'] == cond, 'note'].iloc[0]}")
        lines.append("")
    lines += ["## Definitions", ""]
    lines += [f"- **{METRICS[m]['label']}** (`{m}`): {METRICS[m]['doc']}" for m in _metrics_of(ev)]
    lines += ["", "Settings:", ""]
    lines += [f"- {k}: {v}" for k, v in s.items() if v is not None]
    lines += ["", "Files: `metrics.csv` (tidy table), `metrics.json`.", ""]
    report = out / "report.md"
    _atomic_write_text(report, "\n".join(lines))
    return report


def evaluate_and_report(real, generated, out_dir, *, history=None, title: str = "genjax evaluation",
                        description: str | None = None, figures: bool = True, **evaluate_kwargs):
    """:func:`genjax.metrics.evaluate` then :func:`write_report`.

    Arguments:
        real, generated: as :func:`genjax.metrics.evaluate` (AnnData or count arrays).
        out_dir: output folder.
        history, title, description, figures: as :func:`write_report`.
        **evaluate_kwargs: passed to :func:`genjax.metrics.evaluate` (``condition_key``, ``control``, ...).

    Returns:
        ``(evaluation, path of report.md)``.
    """
    ev = evaluate(real, generated, **evaluate_kwargs)
    return ev, write_report(ev, out_dir, history=history, title=title, description=description, figures=figures)
