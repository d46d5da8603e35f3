"""genjax.report: report.md holds the metric tables (control beside every value, per condition) and links
figures that exist; files are replaced atomically and a failure leaves the old report in place."""

import json

import numpy as np
import pandas as pd
import pytest

import genjax.metrics as M
import genjax.report as R


def _data():
    rng = np.random.default_rng(0)
    g = 20
    pa, pb = rng.gamma(2.0, 1.0, g), rng.gamma(2.0, 1.0, g)
    pb[:6] *= 5

    def sample(na, nb):
        x = np.vstack([rng.poisson(pa, (na, g)), rng.poisson(pb, (nb, g))]).astype(np.float32)
        return x, np.array(["A"] * na + ["B"] * nb)

    return sample(50, 40), sample(45, 35), sample(60, 50)


KW = dict(n_components=3, knn_repeats=1)


@pytest.fixture(scope="module")
def ev():
    (xr, lr), (xg, lg), (xt, lt) = _data()
    return M.evaluate(xr, xg, real_labels=lr, generated_labels=lg, control=xt, control_labels=lt,
                      condition_key="cell_type", **KW)


def test_report_tables_and_links(ev, tmp_path):
    (tmp_path / "model.bin").write_text("keep me")
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "val_loss": 1.2 / (e + 1)} for e in range(5)]
    path = R.write_report(ev, tmp_path, history=history, title="PBMC test", description="A test run.", dpi=30)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert text.startswith("# PBMC test\n\nA test run.")
    assert "| metric | generated | control (real vs real) | ideal | better |" in text
    # every metric appears with its generated and control values side by side
    for m, spec in M.METRICS.items():
        g, c = ev.value(m), ev.value(m, which="control")
        assert f"| {spec['label']} | {g:.3f} | {c:.3f} |" in text
    # per condition: one row per condition, entries "generated (control)"
    assert "## Per condition (`cell_type`)" in text
    e_a, c_a = ev.value("energy_distance", "A"), ev.value("energy_distance", "A", "control")
    row_a = next(line for line in text.splitlines() if line.startswith("| A |"))
    assert row_a.startswith("| A | 50 | 45 | 60 |") and f"{e_a:.3f} ({c_a:.3f})" in row_a
    assert sum(line.startswith("| B |") for line in text.splitlines()) == 1
    # figure links resolve to PNG files
    links = [line[line.index("](") + 2: -1] for line in text.splitlines() if line.startswith("![")]
    assert {"figures/evaluation_panel.png", "figures/condition_panels.png",
            "figures/training_curves.png"} <= set(links)
    for link in links:
        assert (tmp_path / link).read_bytes()[:4] == b"\x89PNG"
    # the machine-readable copies
    csv = pd.read_csv(tmp_path / "metrics.csv", keep_default_na=False, na_values=[""])
    np.testing.assert_allclose(csv["generated"], ev.table["generated"], rtol=1e-6)
    js = json.loads((tmp_path / "metrics.json").read_text())
    assert js["metrics"]["B"]["knn_accuracy"]["control"] == pytest.approx(ev.value("knn_accuracy", "B", "control"))
    assert (tmp_path / "model.bin").read_text() == "keep me"
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary files left


def test_report_failure_keeps_old_report(ev, tmp_path, monkeypatch):
    (tmp_path / "report.md").write_text("old report")

    def boom(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(R.plots, "save_all", boom)
    with pytest.raises(RuntimeError, match="figure failed"):
        R.write_report(ev, tmp_path)
    assert (tmp_path / "report.md").read_text() == "old report"
    with pytest.raises(TypeError, match="Evaluation"):
        R.write_report({"a": 1}, tmp_path)


def test_evaluate_and_report_without_figures(tmp_path):
    (xr, lr), (xg, lg), _ = _data()
    ev, path = R.evaluate_and_report(xr, xg, tmp_path / "out", figures=False, control=None, **KW)
    text = path.read_text()
    assert "![" not in text and not (tmp_path / "out" / "figures").exists()
    assert "| energy distance |" in text and "## Per condition" not in text
    assert "control cells: none" in text
    assert R.markdown_tables(ev).startswith("### All cells")
    assert R.condition_table(ev) == ""
