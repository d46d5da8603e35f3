"""Perturbation baselines against numpy references computed here on a tiny synthetic AnnData (five genes, three
cell types, controls, singles A and B and the double A+B), and their named errors."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from genjax.data import PerturbationSpec, UnknownPerturbationError
from genjax.models import BASELINES, LinearBaseline, PerturbationBaseline

SPEC = PerturbationSpec("perturbation", "control", ("cell_type",))
TYPES = ("T1", "T2", "T3")
LABELS = ("control", "A", "B", "B+A")  # the double written out of canonical order on purpose


def _synthetic(n_genes=5, seed=0, sparse=False, cells=(7, 9)):
    rng = np.random.default_rng(seed)
    base = rng.uniform(2, 20, n_genes)
    obs, blocks = [], []
    for ti, t in enumerate(TYPES):
        for p in LABELS:
            n = int(rng.integers(*cells))
            effect = np.ones(n_genes)
            if "A" in p:
                effect[: n_genes // 2] *= 3.0 + ti
            if "B" in p:
                effect[n_genes // 2:] *= 0.3
            counts = rng.poisson(base * (1 + 0.4 * ti) * effect, size=(n, n_genes)).astype(np.float32)
            counts[:, 0] += 1  # no empty cell
            blocks.append(counts)
            obs += [(p, t)] * n
    X = np.concatenate(blocks)
    frame = pd.DataFrame(obs, columns=["perturbation", "cell_type"],
                         index=[f"cell{i}" for i in range(len(obs))])
    return ad.AnnData(X=sp.csr_matrix(X) if sparse else X, obs=frame,
                      var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def _log1p(adata):
    X = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X, np.float64)
    return np.log1p(X / X.sum(1, keepdims=True) * 1e4)


def _mask(adata, label, cell_type=None):
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    hit = np.isin(labels, ["A+B", "B+A"]) if label == "A+B" else labels == label
    if cell_type is not None:
        hit &= adata.obs["cell_type"].astype(str).to_numpy() == cell_type
    return hit


def _mean(adata, label, cell_type=None):
    return _log1p(adata)[_mask(adata, label, cell_type)].mean(0)


@pytest.fixture(scope="module")
def data():
    full = _synthetic()
    train = full[~_mask(full, "A+B", "T1")].copy()  # the double is held out in T1
    controls = np.flatnonzero(_mask(full, "control", "T1"))
    source = full[controls[::2]].copy()  # half of T1's controls: the source differs from the control mean
    return full, train, source


def test_registry_names():
    assert set(BASELINES) == {"no_change", "control_mean", "noncontrol_mean", "matching_mean", "additive",
                              "mean_delta", "linear"}
    assert all(issubclass(c, PerturbationBaseline) and c.name == n for n, c in BASELINES.items())


def test_means_and_cells_against_numpy(data):
    full, train, source = data
    s = _mean(source, "control")
    c = _mean(train, "control", "T1")
    a, b = _mean(train, "A", "T1"), _mean(train, "B", "T1")
    perturbed = (~_mask(train, "control")) & (train.obs["cell_type"] == "T1").to_numpy()
    expected = {
        "no_change": s,
        "control_mean": c,
        "noncontrol_mean": _log1p(train)[perturbed].mean(0),
        "matching_mean": (a + b) / 2,
        "additive": s + (a - c) + (b - c),
    }
    for name, ref in expected.items():
        model = BASELINES[name](SPEC).fit(train)
        got = model.predict_mean(source, "A+B")
        assert got.dtype == np.float32 and got.shape == (full.n_vars,)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=name)
        cells = model.predict_cells(source, "B+A")  # any member order
        np.testing.assert_allclose(cells, np.maximum(_log1p(source) + (ref - s), 0), rtol=1e-5, atol=1e-5)
        assert cells.dtype == np.float32 and cells.min() >= 0
    additive = BASELINES["additive"](SPEC).fit(train)
    controls = train[_mask(train, "control", "T1")].copy()  # Norman form: yhat_AB = y_A + y_B - y_ctrl
    np.testing.assert_allclose(additive.predict_mean(controls, "A+B"), a + b - c, rtol=1e-5, atol=1e-5)
    matching = BASELINES["matching_mean"](SPEC).fit(train)  # a seen condition: its own training mean
    np.testing.assert_allclose(matching.predict_mean(source, "A"), a, rtol=1e-5, atol=1e-5)
    t2 = train[_mask(train, "control", "T2")].copy()  # a seen double in T2: its own mean
    np.testing.assert_allclose(matching.predict_mean(t2, "A+B"), _mean(train, "A+B", "T2"), rtol=1e-5, atol=1e-5)


def test_matching_mean_falls_back_to_noncontrol_mean(data):
    full, train, source = data
    no_b = train[~_mask(train, "B", "T1")].copy()
    perturbed = (~_mask(no_b, "control")) & (no_b.obs["cell_type"] == "T1").to_numpy()
    ref = (_mean(no_b, "A", "T1") + _log1p(no_b)[perturbed].mean(0)) / 2  # Systema: pert_mean for a missing B
    got = BASELINES["matching_mean"](SPEC).fit(no_b).predict_mean(source, "A+B")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_mean_delta_against_numpy(data):
    full, _, source = data
    held = _mask(full, "A", "T1") | _mask(full, "A+B", "T1")
    train = full[~held].copy()
    s = _mean(source, "control")

    def delta(label):
        return np.mean([_mean(train, label, t) - _mean(train, "control", t) for t in ("T2", "T3")], axis=0)

    model = BASELINES["mean_delta"](SPEC).fit(train)
    np.testing.assert_allclose(model.predict_mean(source, "A"), s + delta("A"), rtol=1e-5, atol=1e-5)
    # the double is seen in T2 and T3: its own delta
    np.testing.assert_allclose(model.predict_mean(source, "A+B"), s + delta("A+B"), rtol=1e-5, atol=1e-5)
    # a double never seen elsewhere: the sum of its members' deltas
    no_double = train[~_mask(train, "A+B")].copy()
    got = BASELINES["mean_delta"](SPEC).fit(no_double).predict_mean(source, "A+B")
    np.testing.assert_allclose(got, s + delta("A") + delta("B"), rtol=1e-5, atol=1e-5)
    # its own cell type's delta is never used, even where it exists
    np.testing.assert_allclose(model.predict_mean(source, "B"), s + delta("B"), rtol=1e-5, atol=1e-5)


def _linear_reference(train, alpha):
    """Ridge of the condition shifts on [A, B, one-hot T1..T3], control rows with target 0, numpy only."""
    X, Y, n_pert = [], [], 0
    for label in ("A", "B", "A+B", "control"):
        for t in TYPES:
            if not _mask(train, label, t).any():
                continue
            X.append([float("A" in label), float("B" in label)] + [float(t == u) for u in TYPES])
            Y.append(_mean(train, label, t) - _mean(train, "control", t))
            n_pert += label != "control"
    X, Y = np.array(X), np.array(Y)

    def fit(rows):
        Xr, Yr = X[rows], Y[rows]
        return np.linalg.solve(Xr.T @ Xr + alpha * np.eye(X.shape[1]), Xr.T @ Yr)

    W = fit(np.arange(len(X)))
    loo = [np.mean((Y[i] - X[i] @ fit(np.delete(np.arange(len(X)), i))) ** 2) for i in range(n_pert)]
    return W, float(np.mean(loo))


def test_linear_against_numpy_ridge_and_leave_one_condition_out(data):
    full, train, source = data
    s = _mean(source, "control")
    x_ab_t1 = np.array([1.0, 1.0, 1.0, 0.0, 0.0])
    W, _ = _linear_reference(train, 0.3)
    fixed = LinearBaseline(SPEC, alpha=0.3).fit(train)
    np.testing.assert_allclose(fixed.predict_mean(source, "A+B"), s + x_ab_t1 @ W, rtol=1e-5, atol=1e-5)
    alphas = (0.01, 0.1, 1.0, 10.0)
    chosen = LinearBaseline(SPEC, alphas=alphas).fit(train)
    errors = {a: _linear_reference(train, a)[1] for a in alphas}
    for a in alphas:
        assert chosen.cv_errors[a] == pytest.approx(errors[a], rel=1e-6)
    assert chosen.alpha_ == min(errors, key=errors.get)
    W = _linear_reference(train, chosen.alpha_)[0]
    np.testing.assert_allclose(chosen.predict_mean(source, "A+B"), s + x_ab_t1 @ W, rtol=1e-5, atol=1e-5)
    assert BASELINES["linear"] is LinearBaseline


def test_sparse_input_read_in_chunks_equals_dense():
    dense = _synthetic(n_genes=20000, cells=(20, 25), seed=1)  # > 4M values: several chunks
    sparse = dense.copy()
    sparse.X = sp.csr_matrix(dense.X)
    src = dense[_mask(dense, "control", "T2")].copy()
    for name in ("additive", "noncontrol_mean"):
        a = BASELINES[name](SPEC).fit(dense).predict_mean(src, "A+B")
        b = BASELINES[name](SPEC).fit(sparse).predict_mean(src, "A+B")
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    ref = _mean(dense, "A", "T2") + _mean(dense, "B", "T2") - _mean(dense, "control", "T2")
    got = BASELINES["additive"](SPEC).fit(sparse).predict_mean(src, "A+B")
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_layer_and_target_sum(data):
    full, train, source = data
    train, source = train.copy(), source.copy()
    train.layers["counts"], source.layers["counts"] = train.X.copy(), source.X.copy()
    train.X, source.X = np.zeros_like(train.X), np.zeros_like(source.X)
    got = BASELINES["control_mean"](SPEC, layer="counts", target_sum=100.0).fit(train).predict_mean(source, "A")
    X = np.asarray(train.layers["counts"], np.float64)[_mask(train, "control", "T1")]
    np.testing.assert_allclose(got, np.log1p(X / X.sum(1, keepdims=True) * 100).mean(0), rtol=1e-5)


def test_source_errors_name_the_cell_and_the_values(data):
    full, train, source = data
    model = BASELINES["no_change"](SPEC).fit(train)
    bad = full[np.flatnonzero(_mask(full, "control", "T1"))[:3].tolist() + [int(np.flatnonzero(
        _mask(full, "A", "T1"))[0])]].copy()
    with pytest.raises(ValueError, match=rf"source cell '{bad.obs_names[-1]}' is not a control.*'A'"):
        model.predict_mean(bad, "A")
    mixed = full[_mask(full, "control", "T1") | _mask(full, "control", "T3")].copy()
    with pytest.raises(ValueError, match=r"one covariate combination.*cell_type='T1'.*cell_type='T3'"):
        model.predict_cells(mixed, "A")
    with pytest.raises(ValueError, match="source genes differ"):
        model.predict_mean(source[:, :3].copy(), "A")
    with pytest.raises(RuntimeError, match="not fitted"):
        BASELINES["additive"](SPEC).predict_mean(source, "A")
    with pytest.raises(ValueError, match="target_sum must be > 0"):
        BASELINES["additive"](SPEC, target_sum=0)


def test_unknown_perturbations_and_covariates_are_named(data):
    full, train, source = data
    no_b = train[~_mask(train, "B", "T1")].copy()
    with pytest.raises(UnknownPerturbationError, match=r"member 'B' was never seen alone.*cell_type='T1'"):
        BASELINES["additive"](SPEC).fit(no_b).predict_mean(source, "A+B")
    no_a = full[~(_mask(full, "A") | _mask(full, "A+B"))].copy()
    with pytest.raises(UnknownPerturbationError, match=r"'A'"):
        BASELINES["linear"](SPEC).fit(no_a).predict_mean(source, "A+B")
    only_t1_a = full[~(_mask(full, "A", "T2") | _mask(full, "A", "T3") | _mask(full, "A+B"))].copy()
    with pytest.raises(UnknownPerturbationError, match=r"'A' was never seen .* other than cell_type='T1'"):
        BASELINES["mean_delta"](SPEC).fit(only_t1_a).predict_mean(source, "A")
    with pytest.raises(UnknownPerturbationError, match=r"member 'A'"):
        BASELINES["mean_delta"](SPEC).fit(only_t1_a).predict_mean(source, "A+B")
    no_t1 = full[(full.obs["cell_type"] != "T1").to_numpy() | _mask(full, "control")].copy()
    with pytest.raises(UnknownPerturbationError, match=r"no perturbed training cell has cell_type='T1'"):
        BASELINES["noncontrol_mean"](SPEC).fit(no_t1).predict_mean(source, "A")
    new_type = source.copy()
    new_type.obs["cell_type"] = "T9"
    with pytest.raises(UnknownPerturbationError, match=r"no training control cell has cell_type='T9'"):
        BASELINES["control_mean"](SPEC).fit(train).predict_mean(new_type, "A")
    with pytest.raises(UnknownPerturbationError, match=r"covariate cell_type='T9' was never seen"):
        BASELINES["linear"](SPEC).fit(train).predict_mean(new_type, "A")
    with pytest.raises(ValueError, match="mean_delta .* has no covariate_keys"):
        BASELINES["mean_delta"](PerturbationSpec("perturbation", "control")).fit(train)
    # no_change needs nothing from training
    np.testing.assert_allclose(BASELINES["no_change"](SPEC).fit(train).predict_mean(new_type, "Z"),
                               _mean(source, "control"), rtol=1e-5)
