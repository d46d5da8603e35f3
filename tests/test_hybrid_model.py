"""HybridModel: the predictor's mean carried into count cells, intervals of every kind, the three predictor
kinds, save / load, named errors. Coverage on a known NB model is in test_conformal / test_calibration_metrics;
here the wrapper's own contracts."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from test_perturbation_model import _counts

import genjax
from genjax.data import UnknownPerturbationError

KEYS = ["cell_type", "condition"]


@pytest.fixture(scope="module")
def hybrid():
    data = _counts(n=50)
    train = data[~((data.obs.condition == "A+B") & (data.obs.cell_type == "y"))].copy()
    hm = genjax.HybridModel(train, "mean_delta", KEYS, perturbation_key="condition", control="ctrl",
                            vae_kwargs=dict(n_hidden=16, n_latent=4))
    hm.fit(max_epochs=3, batch_size=64, prior_steps=60, prior_kwargs=dict(n_hidden=32, n_layers=2), progress=False,
           calibrate=False)
    hm.calibrate(train, n=60, levels=(0.5, 0.9))
    return data, train, hm


def test_samples_are_counts_whose_mean_is_the_predictors(hybrid):
    data, train, hm = hybrid
    target = {"cell_type": "y", "condition": "A+B"}  # held out: mean-delta carries x's A+B change to y
    cells = hm.sample(target, 400, seed=1)
    assert cells.shape == (400, data.n_vars) and (cells.obs["condition"] == "A+B").all()
    assert np.all(cells.X == np.round(cells.X)) and cells.X.min() >= 0
    predicted = hm.predict_mean(target).to_numpy()[0]
    src = train[(train.obs.condition == "ctrl") & (train.obs.cell_type == "y")].copy()
    np.testing.assert_allclose(predicted, genjax.models.MeanDelta(hm.predictor.spec).fit(train).predict_mean(
        src, "A+B"), atol=1e-5)
    got = genjax.data.normalize_log1p(cells.X).mean(0)
    assert np.abs(got - predicted).mean() < 0.15  # up to the normalisation no 30-gene cells can meet exactly
    own = hm.sample(target, 400, seed=1, mean_weight=1.0)  # the residual model's own mean differs
    assert np.abs(genjax.data.normalize_log1p(own.X).mean(0) - predicted).mean() > np.abs(got - predicted).mean()
    np.testing.assert_array_equal(hm.sample(target, 400, seed=1).X, cells.X)  # seeded


def test_intervals_of_both_kinds(hybrid):
    data, train, hm = hybrid
    target = [{"cell_type": "y", "condition": "A+B"}, ("x", "A")]
    lo, hi = hm.predict_interval(target, 0.9, "cell", n=300)
    assert list(lo.index) == ["y | A+B", "x | A"] and lo.shape == (2, data.n_vars)
    assert (lo.to_numpy() <= hi.to_numpy()).all() and (lo.to_numpy() == np.round(lo.to_numpy())).all()
    real = data[(data.obs.condition == "A+B") & (data.obs.cell_type == "y")].X
    inside = (real >= lo.to_numpy()[0]) & (real <= hi.to_numpy()[0])
    assert inside.mean() > 0.6  # a 3-epoch model on 30 genes: a loose check that the bounds are about right
    mlo, mhi = hm.predict_interval(target, 0.5, "mean")
    pred = hm.predict_mean(target).to_numpy()
    assert (mlo.to_numpy() <= pred + 1e-9).all() and (pred <= mhi.to_numpy() + 1e-9).all()
    assert np.isfinite(mlo.to_numpy()).all()
    with pytest.raises(ValueError, match="level 0.8 is not calibrated"):
        hm.predict_interval(target, 0.8, "cell")
    with pytest.raises(ValueError, match="level must be"):
        hm.predict_interval(target, 1.2)
    with pytest.raises(ValueError, match="kind must be one of"):
        hm.predict_interval(target, 0.5, "gene")


def test_table_and_function_predictors_and_saving(hybrid, tmp_path):
    data, train, hm = hybrid
    labels = [f"{t} | {p}" for t in ("x", "y") for p in ("ctrl", "A", "B", "A+B")]
    profiles = {lab: hm.predict_mean(lab).to_numpy()[0] for lab in labels}
    table = pd.DataFrame(profiles, index=hm.var_names).T
    tm = genjax.HybridModel(train, table, KEYS, vae_kwargs=dict(n_hidden=16, n_latent=4))
    tm.fit(max_epochs=2, batch_size=64, prior_steps=30, prior_kwargs=dict(n_hidden=32, n_layers=2), progress=False,
           calibrate=False)
    tm.calibrate(train, n=40, levels=(0.5,))
    np.testing.assert_allclose(tm.predict_mean(("y", "A+B")).to_numpy()[0], profiles["y | A+B"])
    lo, hi = tm.predict_interval(("y", "A+B"), 0.5, "mean")  # split-conformal on the training residuals
    assert np.isfinite(lo.to_numpy()).all()
    tm.save(tmp_path / "tm")
    back = genjax.HybridModel.load(tmp_path / "tm")
    np.testing.assert_array_equal(back.sample(("y", "A+B"), 50, seed=3).X, tm.sample(("y", "A+B"), 50, seed=3).X)
    hm.save(tmp_path / "hm")
    hb = genjax.HybridModel.load(tmp_path / "hm")
    np.testing.assert_allclose(hb.predict_interval(("y", "A+B"), 0.5, "mean")[1].to_numpy(),
                               hm.predict_interval(("y", "A+B"), 0.5, "mean")[1].to_numpy())

    def predict(conditions: pd.DataFrame) -> np.ndarray:
        return np.stack([profiles[f"{t} | {p}"] for t, p in conditions[KEYS].to_numpy()])

    fm = genjax.HybridModel(train, predict, KEYS, vae_kwargs=dict(n_hidden=16, n_latent=4))
    fm.fit(max_epochs=1, batch_size=64, prior_steps=20, prior_kwargs=dict(n_hidden=32, n_layers=2), progress=False,
           calibrate=False)
    fm.save(tmp_path / "fm")
    with pytest.raises(ValueError, match="predictor is a function"):
        genjax.HybridModel.load(tmp_path / "fm")
    again = genjax.HybridModel.load(tmp_path / "fm", predictor=predict)
    np.testing.assert_array_equal(again.sample(("x", "B"), 20).X, fm.sample(("x", "B"), 20).X)


def test_regressor_predictor_fits_condition_means_and_saves(hybrid, tmp_path):
    data, train, hm = hybrid
    rm = genjax.HybridModel(train, "regressor", KEYS, vae_kwargs=dict(n_hidden=16, n_latent=4),
                            predictor_kwargs=dict(steps=300, n_folds=3))
    rm.fit(max_epochs=1, batch_size=64, prior_steps=20, prior_kwargs=dict(n_hidden=32, n_layers=2), progress=False,
           calibrate=False)
    rm.calibrate(train, n=40, levels=(0.5,))
    # trained on the 7 training conditions' observed means: it reproduces them closely in sample
    seen = ("x", "A")
    cells = train[(train.obs.cell_type == "x") & (train.obs.condition == "A")].X
    observed = genjax.data.normalize_log1p(np.asarray(cells)).mean(0)
    np.testing.assert_allclose(rm.predictor.observed[seen], observed, atol=1e-6)
    grand = np.mean(list(rm.predictor.observed.values()), axis=0)
    assert np.abs(rm.predict_mean(seen).to_numpy()[0] - observed).mean() < 0.3 * np.abs(grand - observed).mean()
    lo, hi = rm.predict_interval(("y", "A+B"), 0.5, "mean")  # CV+ over the regressor's folds
    pred = rm.predict_mean(("y", "A+B")).to_numpy()
    # CV+ bounds come from the fold models, so they need not contain the full fit's prediction
    assert np.isfinite(lo.to_numpy()).all() and (lo.to_numpy() <= hi.to_numpy()).all()
    rm.save(tmp_path / "rm")
    back = genjax.HybridModel.load(tmp_path / "rm")
    np.testing.assert_array_equal(back.predict_mean(("y", "A+B")).to_numpy(), pred)
    np.testing.assert_array_equal(back.predict_interval(("y", "A+B"), 0.5, "mean")[0].to_numpy(), lo.to_numpy())
    np.testing.assert_array_equal(back.sample(("y", "A+B"), 30, seed=2).X, rm.sample(("y", "A+B"), 30, seed=2).X)
    with pytest.raises(UnknownPerturbationError, match="never saw value 'z'"):
        rm.predict_mean(("z", "A"))


def test_named_errors(hybrid):
    data, train, hm = hybrid
    with pytest.raises(UnknownPerturbationError, match="KLF1"):
        hm.sample({"cell_type": "y", "condition": "KLF1"}, 10)
    with pytest.raises(KeyError, match="lacks the keys"):
        hm.sample({"cell_type": "y"}, 10)
    with pytest.raises(KeyError, match="not obs columns"):
        genjax.HybridModel(train, "mean_delta", ["donor"])
    with pytest.raises(ValueError, match="give perturbation_key and control"):
        genjax.HybridModel(train, "mean_delta", KEYS)
    bad = {f"{t} | {p}": np.zeros(data.n_vars) for t in ("x", "y") for p in ("ctrl", "A", "B", "A+B")}
    bad["x | A"] = np.full(data.n_vars, np.nan)
    with pytest.raises(ValueError, match="condition 'x | A', gene 'g0'"):
        genjax.HybridModel(train, bad, KEYS)
    with pytest.raises(ValueError, match=r"returned shape \(1, 3\)"):
        genjax.HybridModel(train, lambda t: np.zeros((len(t), 3)), KEYS).predictor([("x", "A")])
    with pytest.raises(RuntimeError, match="not fitted"):
        genjax.HybridModel(train, bad | {"x | A": np.zeros(data.n_vars)}, KEYS).sample(("x", "A"), 5)
    with pytest.raises(ValueError, match="no condition given"):
        hm.sample([], 10)


def test_cli_trains_a_hybrid_model_and_writes_intervals(tmp_path, capsys):
    from genjax.cli import main as cli

    data = _counts(n=30, genes=20)
    train = data[~((data.obs.condition == "A+B") & (data.obs.cell_type == "y"))].copy()
    train.write_h5ad(tmp_path / "train.h5ad")
    base = ["train", "--data", str(tmp_path / "train.h5ad"), "--out", str(tmp_path / "hm"), "--hybrid", "mean-delta",
            "--perturbation-key", "condition", "--control", "ctrl", "--vae-epochs", "1", "--prior-steps", "10",
            "--quiet"]
    assert cli(base) == 2 and "--hybrid needs --condition-key" in capsys.readouterr().err
    assert cli(base + ["--condition-key", "cell_type", "--condition-key", "condition"]) == 0
    out = tmp_path / "cells.h5ad"
    predict = ["predict", "--model", str(tmp_path / "hm"), "--out", str(out), "--n", "50"]
    assert cli(predict + ["--condition", "cell_type=y", "--condition", "condition=A+B", "--interval", "0.9"]) == 0
    cells = ad.read_h5ad(out)
    assert cells.n_obs == 50 and (cells.obs["condition"] == "A+B").all()
    assert (cells.layers["lower"] <= cells.layers["upper"]).all() and cells.varm["mean_interval"].shape == (20, 2)
    capsys.readouterr()
    assert cli(predict) == 2 and "give --condition" in capsys.readouterr().err
    assert cli(predict + ["--condition", "cell_type=y", "--condition", "condition=A", "--interval", "1.5"]) == 2
    assert "--interval must lie in (0, 1)" in capsys.readouterr().err


def test_choose_mean_weight_by_leaving_conditions_out(hybrid):
    """The leave-one-condition-out weight: high for a predictor far off the observed means, 0 for one equal to
    them (nothing to correct); the blend is never worse than either end (least squares on [0, 1]); sampling then
    uses the chosen weight by default, and the intervals are recalibrated at it."""
    data, train, hm = hybrid
    cells = [tuple(r) for r in train.obs[KEYS].astype(str).to_numpy()]
    means = genjax.models.MeanDelta(hm.predictor.spec).fit(train).stats
    observed = {f"{t} | {p}": means.get(p, (t,)) for t, p in sorted(set(cells))}
    observed["y | A+B"] = observed["x | A+B"]
    rng = np.random.default_rng(0)
    off = {k: v + rng.normal(0.0, 5.0, v.shape) for k, v in observed.items()}
    far = genjax.HybridModel(train, pd.DataFrame(off, index=train.var_names).T, KEYS,
                             vae_kwargs=dict(n_hidden=16, n_latent=4))
    far.fit(max_epochs=2, batch_size=64, prior_steps=30, prior_kwargs=dict(n_hidden=32, n_layers=2),
            progress=False, calibrate=False)
    far.calibrate(train, n=20, levels=(0.5,), max_conditions=2)
    choose = dict(max_conditions=1, min_cells=10, n=64, prior_steps=20)
    got = far.choose_mean_weight(**choose)
    assert got["weight"] > 0.5 and len(got["conditions"]) == 1
    assert got["mse_blend"] <= min(got["mse_predictor"], got["mse_model"]) + 1e-12
    target = ("y", "A+B")
    np.testing.assert_array_equal(far.sample(target, 50, seed=2).X,
                                  far.sample(target, 50, seed=2, mean_weight=got["weight"]).X)
    assert far._calibrated_on[1]["max_conditions"] == 2 and 0.5 in far.calibration["quantiles"]  # recalibrated
    far.predictor.table = {k: v.astype(np.float64) for k, v in observed.items()}  # now the observed means
    exact = far.choose_mean_weight(**choose)
    assert exact["weight"] == 0.0 and exact["mse_predictor"] < 1e-10
    with pytest.raises(RuntimeError, match="no training condition"):
        far.choose_mean_weight(min_cells=10**6)
