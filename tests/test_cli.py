"""The genjax command: train / generate / evaluate on a small .h5ad, the demo on a PBMC3k subsample, named errors."""

import json

import anndata as ad
import numpy as np
import pytest

import genjax
from genjax.cli import main, stratified_split

FAST = ["--vae-epochs", "3", "--prior-steps", "30", "--quiet"]


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    """In-process commands must not point this test process's JAX at a persistent cache."""
    monkeypatch.setenv("GENJAX_NO_COMPILATION_CACHE", "1")


@pytest.fixture(scope="module")
def h5ad(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    data = genjax.datasets.synthetic_counts(150, 30, 3, library_size=500.0, seed=2)
    data.write_h5ad(d / "data.h5ad")
    return d


def test_stratified_split_keeps_proportions():
    labels = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    tr, te = stratified_split(labels, 0.2, seed=0)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 100
    assert {k: int((labels[te] == k).sum()) for k in "abc"} == {"a": 10, "b": 6, "c": 4}


def test_train_generate_evaluate(h5ad):
    model = h5ad / "model"
    assert main(["train", "--data", str(h5ad / "data.h5ad"), "--out", str(model), "--condition-key", "cell_type",
                 "--prior-clusters", "3", *FAST]) == 0
    assert (model / "model.json").is_file()
    # the training checkpoints are removed after a successful run (no --keep-checkpoints): nothing beside the model
    assert sorted(p.name for p in h5ad.iterdir() if p.name.startswith("model")) == ["model"]
    assert not (model / "checkpoints").exists() and (model / "train.json").is_file()
    assert genjax.LatentGenerator.load(model).prior_model.config()["net"]["n_categories"] == [3, 3]  # type, cluster
    out = h5ad / "gen.h5ad"
    assert main(["generate", "--model", str(model), "--n", "40", "--out", str(out),
                 "--condition", "cell_type=type_1"]) == 0
    gen = ad.read_h5ad(out)
    assert gen.shape == (40, 30) and (gen.obs["cell_type"] == "type_1").all()
    # without --condition: conditions drawn in training proportions and recorded in .obs
    assert main(["generate", "--model", str(model), "--n", "60", "--out", str(out)]) == 0
    assert set(ad.read_h5ad(out).obs["cell_type"]) <= {"type_0", "type_1", "type_2"}
    assert main(["evaluate", "--real", str(h5ad / "data.h5ad"), "--generated", str(out), "--condition-key",
                 "cell_type", "--out", str(h5ad / "eval")]) == 0
    assert "energy distance" in (h5ad / "eval" / "report.md").read_text()


def test_errors_name_the_problem(h5ad, capsys):
    rc = main(["train", "--data", str(h5ad / "data.h5ad"), "--out", str(h5ad / "m2"), "--condition-key", "tissue",
               *FAST])
    assert rc == 2 and "tissue" in capsys.readouterr().err
    rc = main(["train", "--data", str(h5ad / "missing.h5ad"), "--out", str(h5ad / "m3")])
    err = capsys.readouterr().err
    assert rc == 2 and "--data" in err and "no such file" in err
    rc = main(["generate", "--model", str(h5ad / "model"), "--n", "5", "--out", str(h5ad / "x.h5ad"),
               "--condition", "cell_type=neuron"])
    assert rc == 2 and "neuron" in capsys.readouterr().err


def test_demo_on_a_subsample(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-cells", "300", *FAST]) == 0
    for f in ("report.md", "generated.h5ad", "summary.json", "model/model.json"):
        assert (out / f).exists(), f
    summary = json.loads((out / "summary.json").read_text())
    assert np.isfinite(summary["energy_distance"]) and np.isfinite(summary["energy_distance_control"])
