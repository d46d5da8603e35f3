"""PerturbationModel and its latent response estimator: shifts against hand-computed centroids, the
cross-validated choices against cases with a known answer, predictions, named errors, save / load, the CLI."""

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import genjax
from genjax.cli import main as cli
from genjax.data import PerturbationSpec, UnknownPerturbationError
from genjax.models import LatentResponse

SPEC = PerturbationSpec("condition", "ctrl", ("cell_type",))


def _latent_case(seed=0, n=40, interaction=0.0):
    """Latent points r (cells, 3) of controls, singles A/B/C and doubles in four cell types whose basal centroids
    lie on a line; A's shift grows with the basal coordinate; doubles = sum of singles + ``interaction`` * sum."""
    rng = np.random.default_rng(seed)
    types = ["t0", "t1", "t2", "t3"]
    basal = {t: np.array([float(i), 0.0, 0.0]) for i, t in enumerate(types)}
    single = {"A": lambda t: np.array([0.0, 1.0 + basal[t][0], 0.0]), "B": lambda t: np.array([0.0, 0.0, 2.0]),
              "C": lambda t: np.array([0.0, -1.0, 1.0]), "D": lambda t: np.array([0.0, 0.5, 0.5])}
    rows, labels, covs = [], [], []

    def add(label, t, mean):
        rows.append(mean + 0.01 * rng.normal(size=(n, 3)))
        labels.extend([label] * n)
        covs.extend([t] * n)

    for t in types:
        add("ctrl", t, basal[t])
        for p, f in single.items():
            if not (p == "A" and t == "t3"):  # A in t3 is never measured
                add(p, t, basal[t] + f(t))
        for a, b in (("A", "B"), ("A", "C"), ("A", "D"), ("B", "C"), ("B", "D"), ("C", "D")):
            if t == "t0":
                s = single[a](t) + single[b](t)
                add(f"{a}+{b}", t, basal[t] + s * (1.0 + interaction))
    return np.concatenate(rows), np.asarray(labels, dtype=object), np.asarray(covs, dtype=object)[:, None]


def test_measured_and_carried_shifts_are_the_centroid_differences():
    r, labels, covs = _latent_case()
    keep = labels != "B+D"  # a combination measured nowhere
    r, labels, covs = r[keep], labels[keep], covs[keep]
    resp = LatentResponse.fit(r, labels, covs, SPEC, "scgen")
    mean = {(p, t): r[(labels == p) & (covs[:, 0] == t)].mean(0) for p in ("ctrl", "A", "B", "D")
            for t in ("t0", "t1", "t2")}
    shift, rule = resp.shift("B", ("t1",))
    np.testing.assert_allclose(shift, mean["B", "t1"] - mean["ctrl", "t1"], atol=1e-12)
    assert rule == "measured"
    shift, rule = resp.shift("A", ("t3",))  # scGen: the plain average over the other types
    expected = np.mean([mean["A", t] - mean["ctrl", t] for t in ("t0", "t1", "t2")], axis=0)
    np.testing.assert_allclose(shift, expected, atol=1e-12)
    assert rule == "carried"
    shift, rule = resp.shift("D+B", ("t1",))  # unseen in t1: sum of the members' shifts, any member order
    np.testing.assert_allclose(shift, (mean["B", "t1"] - mean["ctrl", "t1"]) + (mean["D", "t1"] - mean["ctrl", "t1"]),
                               atol=1e-12)
    assert rule == "composed"


def test_compositional_carries_the_response_of_similar_basal_states():
    r, labels, covs = _latent_case()
    resp = LatentResponse.fit(r, labels, covs, SPEC, "compositional")
    assert math.isfinite(resp.bandwidth)  # leave-one-type-out prefers the kernel: A's response follows the basal state
    shift, _ = resp.shift("A", ("t3",))
    scgen, _ = LatentResponse.fit(r, labels, covs, SPEC, "scgen").shift("A", ("t3",))
    truth = np.array([0.0, 4.0, 0.0])
    assert np.linalg.norm(shift - truth) < 0.6 * np.linalg.norm(scgen - truth)


def test_the_interaction_is_learned_only_when_it_predicts_held_out_combinations():
    r, labels, covs = _latent_case(interaction=0.0)
    additive = LatentResponse.fit(r, labels, covs, SPEC, "compositional")
    assert additive.ridge > 1.0  # no interaction in the data: heavy shrinkage (or none at all)
    r, labels, covs = _latent_case(interaction=-0.5)  # every double is half the sum of its singles
    sub = LatentResponse.fit(r, labels, covs, SPEC, "compositional")
    assert math.isfinite(sub.ridge)
    assert sub.shift("B+D", ("t2",))[1] == "carried"  # measured in t0 only: carried, not composed
    # a double never measured anywhere is composed, with the learned interaction shrinking the sum
    labels2 = labels.copy()
    keep = labels2 != "C+D"
    sub2 = LatentResponse.fit(r[keep], labels2[keep], covs[keep], SPEC, "compositional")
    shift, rule = sub2.shift("C+D", ("t0",))
    sums = np.array([0.0, -1.0, 1.0]) + np.array([0.0, 0.5, 0.5])
    assert rule == "composed" and sub2.ridge < math.inf
    assert np.linalg.norm(shift - 0.5 * sums) < np.linalg.norm(sums - 0.5 * sums)


def _pooled_case(a_in_combos: float, dim=10, seed=0):
    """Latent points of controls, singles A-F and doubles; A acts at ``a_in_combos`` of its single effect in every
    combination (4 training doubles contain it), the others as alone."""
    rng = np.random.default_rng(seed)
    single = {m: rng.normal(0, 1, dim) for m in "ABCDEF"}
    in_combo = {**single, "A": a_in_combos * single["A"]}
    rows, labels = [], []
    for label in ["ctrl", *single, "A+B", "A+C", "A+D", "A+F", "B+C", "C+D", "B+E", "D+F"]:
        members = [] if label == "ctrl" else label.split("+")
        effect = single[label] if len(members) == 1 else sum((in_combo[m] for m in members), np.zeros(dim))
        rows.append(effect + 0.02 * rng.normal(size=(30, dim)))
        labels += [label] * 30
    labels = np.asarray(labels, dtype=object)
    return np.concatenate(rows), labels, np.full((len(labels), 1), "t0", dtype=object), single, in_combo


def test_pooled_member_effects_learn_how_a_member_acts_in_combinations():
    """A acts at 0.3 of its single effect in every combination: effects pooled over all conditions predict the
    unseen A+E better than the sum of singles, and the choice is made on training combinations only."""
    r, labels, covs, single, in_combo = _pooled_case(0.3)
    resp = LatentResponse.fit(r, labels, covs, SPEC, "compositional")
    assert math.isfinite(resp.pooling) and math.isinf(resp.ridge)
    shift, rule = resp.shift("A+E", ("t0",))
    truth, additive = in_combo["A"] + single["E"], single["A"] + single["E"]
    assert rule == "composed"
    assert np.linalg.norm(shift - truth) < 0.5 * np.linalg.norm(additive - truth)
    back = LatentResponse.from_dict(resp.to_dict())
    np.testing.assert_allclose(back.shift("A+E", ("t0",))[0], shift)
    # when every member acts as alone, the prediction stays the sum of singles whatever family is chosen
    r, labels, covs, single, _ = _pooled_case(1.0)
    shift, _ = LatentResponse.fit(r, labels, covs, SPEC, "compositional").shift("A+E", ("t0",))
    assert np.linalg.norm(shift - single["A"] - single["E"]) < 0.1


def test_response_round_trips_and_names_what_it_cannot_predict():
    r, labels, covs = _latent_case()
    resp = LatentResponse.fit(r, labels, covs, SPEC, "compositional")
    back = LatentResponse.from_dict(resp.to_dict())
    for p, c in [("A", ("t3",)), ("B+C", ("t2",)), ("D", ("t1",))]:
        np.testing.assert_array_equal(back.shift(p, c)[0], resp.shift(p, c)[0])
    with pytest.raises(UnknownPerturbationError, match="'Z' was never seen"):
        resp.shift("Z", ("t0",))
    with pytest.raises(UnknownPerturbationError, match="member 'Z'"):
        resp.shift("B+Z", ("t0",))
    with pytest.raises(UnknownPerturbationError, match="no control cells"):
        resp.shift("B", ("t9",))


def _counts(seed=0, n=60, genes=30):
    """Tiny NB counts: controls, A, B and A+B (additive in log space) in two cell types."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, genes)
    types = {"x": np.zeros(genes), "y": rng.normal(0, 0.7, genes)}
    effects = {"A": np.where(np.arange(genes) < 8, 1.5, 0.0), "B": np.where(np.arange(genes) >= 22, -1.2, 0.0)}
    X, obs = [], []
    for t, dt in types.items():
        for p in ("ctrl", "A", "B", "A+B"):
            eff = sum((effects[m] for m in p.split("+") if m != "ctrl"), np.zeros(genes))
            mu = 300 * np.exp(base + dt + eff) / np.exp(base + dt + eff).sum()
            X.append(rng.negative_binomial(5, 5 / (5 + mu), size=(n, genes)))
            obs += [(p, t)] * n
    obs = pd.DataFrame(obs, columns=["condition", "cell_type"], index=[f"c{i}" for i in range(len(obs))])
    return ad.AnnData(np.concatenate(X).astype(np.float32), obs=obs,
                      var=pd.DataFrame(index=[f"g{j}" for j in range(genes)]))


@pytest.fixture(scope="module")
def fitted():
    data = _counts()
    train = data[~((data.obs.condition == "A+B") & (data.obs.cell_type == "y"))].copy()
    pm = genjax.PerturbationModel(train, "condition", "ctrl", "cell_type", vae_kwargs=dict(n_hidden=16, n_latent=4))
    pm.fit(max_epochs=3, batch_size=64, progress=False)
    return data, pm


def test_predict_returns_cells_with_their_source_and_is_seeded(fitted, tmp_path):
    data, pm = fitted
    src = data[(data.obs.condition == "ctrl") & (data.obs.cell_type == "y")].copy()
    pred = pm.predict(src, "B+A", n_per_cell=2, seed=3)
    assert pred.shape == (2 * src.n_obs, data.n_vars) and list(pred.var_names) == list(data.var_names)
    assert (pred.obs["condition"] == "A+B").all() and (pred.obs["cell_type"] == "y").all()
    assert list(pred.obs["source_cell"][:4]) == [src.obs_names[0]] * 2 + [src.obs_names[1]] * 2
    assert np.all(pred.X == np.round(pred.X)) and pred.X.min() >= 0
    assert pred.uns["perturbation_rule"] == {"y": "carried"}  # A+B measured in x only
    np.testing.assert_array_equal(pm.predict(src, "A+B", n_per_cell=2, seed=3).X, pred.X)
    scgen = pm.with_method("scgen")  # the same VAE, scGen's average shift
    assert scgen.vae is pm.vae and pm.options["method"] == "compositional"
    r = pm._latent_with_library(pm.adata)
    labels = pm.spec.labels(pm.adata)
    cov = pm.adata.obs["cell_type"].to_numpy()
    expected = (r[(labels == "A+B") & (cov == "x")].mean(0) - r[(labels == "ctrl") & (cov == "x")].mean(0))
    np.testing.assert_allclose(scgen.shift("A+B", cell_type="y")[0], expected, rtol=1e-6, atol=1e-9)
    pm.save(tmp_path / "pm")
    back = genjax.PerturbationModel.load(tmp_path / "pm")
    np.testing.assert_array_equal(back.predict(src, "A+B", n_per_cell=2, seed=3).X, pred.X)
    mean = back.predict_mean(src, "A+B", n_per_cell=2, seed=3)
    np.testing.assert_allclose(mean, genjax.data.normalize_log1p(pred.X).mean(0), rtol=1e-5, atol=1e-6)


def test_source_noise_carries_the_source_counts(fitted):
    """noise="source": no change returns the source cells' own counts; a shift moves them by the coupling (means
    follow the decoder's change); noise="model" redraws them."""
    data, pm = fitted
    src = data[(data.obs.condition == "ctrl") & (data.obs.cell_type == "x")].copy()
    same = pm.predict(src, "ctrl", seed=1)
    assert same.uns["noise"] == "source"
    np.testing.assert_array_equal(same.X, src.X)
    redrawn = pm.predict(src, "ctrl", seed=1, noise="model")
    assert not np.array_equal(redrawn.X, src.X)
    moved = pm.predict(src, "A", n_per_cell=40, seed=2)
    model = pm.predict(src, "A", n_per_cell=40, seed=2, noise="model")
    # E[x' | x] summed over cells is the model's perturbed total where the source totals equal the decoded ones
    ratio = moved.layers["mean"].sum(0) / model.layers["mean"].sum(0)
    assert np.median(np.abs(np.log(ratio))) < 0.15, ratio
    with pytest.raises(ValueError, match="noise must be one of"):
        pm.predict(src, "A", noise="gaussian")
    # the same cells with their genes in another order: the same prediction, in the model's gene order
    shuffled = src[:, np.random.default_rng(0).permutation(src.n_vars)].copy()
    again = pm.predict(shuffled, "A", n_per_cell=40, seed=2)
    assert list(again.var_names) == list(src.var_names)
    np.testing.assert_array_equal(again.X, moved.X)
    with pytest.raises(ValueError, match="training gene"):
        pm.predict(src[:, 1:].copy(), "A")


def test_predict_names_bad_sources_and_unknown_perturbations(fitted):
    data, pm = fitted
    src = data[(data.obs.condition == "ctrl") & (data.obs.cell_type == "y")].copy()
    with pytest.raises(ValueError, match=r"source cell 'c\d+' has condition='A'"):
        pm.predict(data[data.obs.condition != "ctrl"][:5].copy(), "A")
    with pytest.raises(UnknownPerturbationError, match="'KLF1' was never seen"):
        pm.predict(src, "KLF1")
    with pytest.raises(UnknownPerturbationError, match="member 'KLF1'"):
        pm.predict(src, "A+KLF1")
    other = src.copy()
    other.obs["cell_type"] = "z"
    with pytest.raises(UnknownPerturbationError, match="no control cells in training"):
        pm.predict(other, "A")
    with pytest.raises(KeyError, match="perturbation key 'condition'"):
        pm.predict(ad.AnnData(src.X, var=src.var), "A")
    with pytest.raises(KeyError, match="perturbation key 'dose'"):
        genjax.PerturbationModel(data, "dose", "ctrl")
    with pytest.raises(ValueError, match="no cell of adata has the control label 'DMSO'"):
        genjax.PerturbationModel(data, "condition", "DMSO")


def test_cli_trains_and_predicts_a_perturbation_model(tmp_path, capsys):
    data = _counts(n=30)
    train = data[~((data.obs.condition == "A+B") & (data.obs.cell_type == "y"))].copy()
    train.write_h5ad(tmp_path / "train.h5ad")
    data[(data.obs.condition == "ctrl") & (data.obs.cell_type == "y")].copy().write_h5ad(tmp_path / "src.h5ad")
    data[data.obs.condition == "A"].copy().write_h5ad(tmp_path / "notctrl.h5ad")
    base = ["train", "--data", str(tmp_path / "train.h5ad"), "--out", str(tmp_path / "pm"), "--perturbation-key",
            "condition", "--control", "ctrl", "--covariate-key", "cell_type", "--vae-epochs", "2", "--quiet"]
    assert cli(base) == 0
    assert cli(["predict", "--model", str(tmp_path / "pm"), "--data", str(tmp_path / "src.h5ad"), "--perturbation",
                "A+B", "--out", str(tmp_path / "pred.h5ad")]) == 0
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert pred.n_obs == 30 and (pred.obs["condition"] == "A+B").all()
    capsys.readouterr()
    for args, match in [
        (["--perturbation", "A+Q"], "member 'Q'"),
        (["--perturbation", "A", "--data", str(tmp_path / "notctrl.h5ad")], "has condition='A'"),
    ]:
        argv = ["predict", "--model", str(tmp_path / "pm"), "--data", str(tmp_path / "src.h5ad"), "--out",
                str(tmp_path / "x.h5ad"), *args]
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err, err
    real = data[(data.obs.cell_type == "y") & data.obs.condition.isin(["ctrl", "A+B"])].copy()
    real.write_h5ad(tmp_path / "real.h5ad")
    assert cli(["evaluate", "--real", str(tmp_path / "real.h5ad"), "--generated", str(tmp_path / "pred.h5ad"),
                "--perturbation-key", "condition", "--control", "ctrl", "--covariate-key", "cell_type",
                "--train", str(tmp_path / "train.h5ad"), "--out", str(tmp_path / "ev")]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "ev" / "perturbation_metrics.csv")
    assert set(table["condition"]) == {"A+B | y"}
    assert {"model", "baseline additive", "baseline mean_delta", "control", "ceiling"} <= set(table["method"])
    assert "baseline additive" in printed and "model" in printed
    assert cli(["train", "--data", str(tmp_path / "train.h5ad"), "--out", str(tmp_path / "q"),
                "--perturbation-key", "condition"]) == 2
    assert "--perturbation-key needs --control" in capsys.readouterr().err
    assert cli(["evaluate", "--real", str(tmp_path / "real.h5ad"), "--generated", str(tmp_path / "pred.h5ad"),
                "--train", str(tmp_path / "train.h5ad")]) == 2
    assert "give --perturbation-key" in capsys.readouterr().err


def test_evaluate_predicted_perturbations_matches_the_array_path_and_names_bad_input():
    data = _counts(n=30)
    spec = PerturbationSpec("condition", "ctrl", ("cell_type",))
    train = data[~((data.obs.condition == "A+B") & (data.obs.cell_type == "y"))].copy()
    real = data[(data.obs.cell_type == "y") & data.obs.condition.isin(["ctrl", "A+B"])].copy()
    observed = real[real.obs.condition == "A+B"].copy()
    rng = np.random.default_rng(1)
    noisy = observed.copy()  # the observed cells with a count added here and there: a near-oracle
    noisy.X = noisy.X + rng.binomial(1, 0.2, noisy.shape).astype(np.float32)
    noisy.obs["condition"] = "B+A"  # member order does not matter
    table = genjax.metrics.evaluate_predicted_perturbations(real, {"oracle": observed, "noisy": noisy}, spec,
                                                             train=train)
    value = table.set_index(["method", "metric"])["value"]
    assert value["oracle", "r2_mean_deg"] == pytest.approx(1.0) and value["oracle", "l2_top"] == pytest.approx(0.0)
    log = genjax.data.normalize_log1p
    ctrl = real[real.obs.condition == "ctrl"]
    tr = train[train.obs.cell_type == "y"]
    additive = genjax.models.BASELINES["additive"](spec).fit(train).predict_mean(ctrl.copy(), "A+B")
    # additive in y = y controls + (y's A - y's ctrl) + (y's B - y's ctrl) in mean log1p space, by hand

    def m(mask):
        return log(tr.X[mask]).mean(0)
    by_hand = log(ctrl.X).mean(0) + m(tr.obs.condition == "A") + m(tr.obs.condition == "B") - 2 * m(
        tr.obs.condition == "ctrl")
    np.testing.assert_allclose(additive, by_hand, rtol=1e-5, atol=1e-5)
    direct = genjax.metrics.evaluate_perturbations(
        {"A+B | y": log(observed.X)}, {"A+B | y": log(ctrl.X)}, {"noisy": {"A+B | y": log(noisy.X)}},
        additive={"A+B | y": additive}, groups={"A+B | y": "y"})
    d = direct[direct.method == "noisy"].set_index("metric")["value"]
    t = table[table.method == "noisy"].set_index("metric")["value"]
    pd.testing.assert_series_equal(t.sort_index(), d.sort_index())
    wrong_type = noisy.copy()
    wrong_type.obs["cell_type"] = "z"
    with pytest.raises(ValueError, match=r"condition 'A\+B \| z': real has 0 cells"):
        genjax.metrics.evaluate_predicted_perturbations(real, wrong_type, spec)
    with pytest.raises(ValueError, match="genes differ from real's"):
        genjax.metrics.evaluate_predicted_perturbations(real, noisy[:, ::-1].copy(), spec)
    with pytest.raises(ValueError, match="unknown baseline 'mean'"):
        genjax.metrics.evaluate_predicted_perturbations(real, noisy, spec, baselines=["mean"])
    negative = noisy.copy()
    negative.X[0, 3] = -1.0
    with pytest.raises(ValueError, match=r"predicted counts must be non-negative; found -1.0 at cell 'c\d+'"):
        genjax.metrics.evaluate_predicted_perturbations(real, negative, spec)
    with pytest.raises(KeyError, match="covariate key 'cell_type'"):
        genjax.metrics.evaluate_predicted_perturbations(real, ad.AnnData(noisy.X, obs=noisy.obs[["condition"]],
                                                                         var=noisy.var), spec)
