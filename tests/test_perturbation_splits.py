"""Perturbation benchmark splits: masks partition the cells, no held-out condition leaks into training, the
proportions are as documented, seeds reproduce, and the errors name what is wrong. Synthetic data, plus the
PerturBench devel file where it is available."""

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from genjax.data import (
    PerturbationSpec,
    UnknownPerturbationError,
    combination_split,
    combinations_with_singles,
    heldout_condition_split,
    heldout_covariate_split,
    leave_one_double_out,
)

SPEC = PerturbationSpec("condition", "control", ("cell_type",))
DEVEL = Path("/work/shared/data/perturbench_devel.h5ad")
SINGLES = ("A", "B", "C", "D", "F")
DOUBLES = ("A+B", "C+A", "B+C", "C+D", "D+F", "A+F", "B+F", "A+E")  # A+E: E never measured alone


def _synthetic(types=("T1", "T2"), n_controls=40, n_cells=6):
    rows = []
    for t in types:
        rows += [("control", t)] * n_controls
        for p in SINGLES + DOUBLES:
            rows += [(p, t)] * n_cells
    obs = pd.DataFrame(rows, columns=["condition", "cell_type"], index=[f"c{i}" for i in range(len(rows))])
    return ad.AnnData(X=np.ones((len(rows), 3), np.float32), obs=obs)


def _check_partition(split, n):
    assert set(split) == {"train", "val", "test"}
    total = np.zeros(n, int)
    for mask in split.values():
        assert mask.dtype == bool and mask.shape == (n,)
        total += mask
    assert (total == 1).all()


def _conditions(adata, mask):
    labels = SPEC.labels(adata)
    covs = adata.obs["cell_type"].astype(str).to_numpy()
    return set(zip(labels[mask], covs[mask], strict=True))


def test_combination_split_holds_out_doubles_wholesale():
    adata = _synthetic()
    split = combination_split(adata, SPEC, seed=3)
    _check_partition(split, adata.n_obs)
    labels = SPEC.labels(adata)
    n_members = np.array([len(SPEC.members(p)) for p in labels])
    assert split["train"][n_members == 1].all()  # every single trains
    held = _conditions(adata, split["val"] | split["test"]) - {("control", "T1"), ("control", "T2")}
    assert held and not held & _conditions(adata, split["train"])  # no cell of a held-out double trains
    assert not _conditions(adata, split["val"]) & _conditions(adata, split["test"]) - {("control", "T1"),
                                                                                        ("control", "T2")}
    for t in ("T1", "T2"):
        # 7 eligible doubles per type (A+E is not): floor(0.7 * 7) = 4 held out, floor(4 / 2) = 2 in val
        in_t = {p for p, c in held if c == t}
        assert len(in_t) == 4 and "A+E" not in in_t
        assert len({p for p, c in _conditions(adata, split["val"]) if c == t and p != "control"}) == 2
        ctrl = (labels == "control") & (adata.obs["cell_type"] == t).to_numpy()
        assert [int((split[s] & ctrl).sum()) for s in ("train", "val", "test")] == [20, 10, 10]


def test_combination_split_seeds_and_options():
    adata = _synthetic()
    a, b = combination_split(adata, SPEC, seed=0), combination_split(adata, SPEC, seed=0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a["test"], combination_split(adata, SPEC, seed=s)["test"]) for s in range(1, 6))
    every = combination_split(adata, SPEC, seed=0, require_singles=False)  # PerturBench: any double
    held = {p for p, _ in _conditions(adata, every["val"] | every["test"])} - {"control"}
    assert len(_conditions(adata, every["val"] | every["test"]) - {("control", "T1"), ("control", "T2")}) == 10
    assert held <= {SPEC.canonical(d) for d in DOUBLES}
    custom = combination_split(adata, SPEC, heldout_fraction=1.0, val_fraction=0.0,
                               control_fractions=(1.0, 0.0, 0.0))
    assert not custom["val"].any()
    assert _conditions(adata, custom["test"]) == {(SPEC.canonical(d), t) for d in DOUBLES if d != "A+E"
                                                  for t in ("T1", "T2")}


def test_combination_split_errors():
    adata = _synthetic()
    with pytest.raises(ValueError, match=r"heldout_fraction must be in \[0, 1\]; got 1.5"):
        combination_split(adata, SPEC, heldout_fraction=1.5)
    with pytest.raises(ValueError, match="control_fractions must be three fractions"):
        combination_split(adata, SPEC, control_fractions=(0.5, 0.5, 0.5))
    singles_only = adata[np.array([len(SPEC.members(p)) < 2 for p in SPEC.labels(adata)])].copy()
    with pytest.raises(ValueError, match="no combination"):
        combination_split(singles_only, SPEC)
    no_singles = adata[np.array([len(SPEC.members(p)) != 1 for p in SPEC.labels(adata)])].copy()
    with pytest.raises(UnknownPerturbationError, match=r"A\+B: A, B.*require_singles=False"):
        combination_split(no_singles, SPEC)
    no_controls = adata[(adata.obs["condition"] != "control").to_numpy()].copy()
    with pytest.raises(ValueError, match="no cell has the control label 'control'"):
        combination_split(no_controls, SPEC)


def test_combinations_with_singles():
    table = combinations_with_singles(_synthetic(types=("T1",)), SPEC)
    assert set(table["perturbation"]) == {SPEC.canonical(d) for d in DOUBLES}
    assert table.set_index("perturbation").loc["A+E", "missing_singles"] == ("E",)
    assert table["has_singles"].sum() == 7


def test_heldout_condition_split_keeps_the_sources_in_training():
    adata = _synthetic()
    split = heldout_condition_split(adata, SPEC, "B+A", {"cell_type": "T2"})
    _check_partition(split, adata.n_obs)
    assert _conditions(adata, split["test"]) == {("A+B", "T2")} and not split["val"].any()
    assert split["test"].sum() == 6 and ("control", "T2") in _conditions(adata, split["train"])
    with_val = heldout_condition_split(adata, SPEC, "A+B", {"cell_type": "T2"}, val_fraction=0.5, seed=1)
    _check_partition(with_val, adata.n_obs)
    assert np.array_equal(with_val["test"], split["test"])
    labels = SPEC.labels(adata)
    assert with_val["val"].sum() == 3 * (2 * 13 - 1) and not (with_val["val"] & (labels == "control")).any()
    again = heldout_condition_split(adata, SPEC, "A+B", {"cell_type": "T2"}, val_fraction=0.5, seed=1)
    assert np.array_equal(again["val"], with_val["val"])


def test_heldout_condition_split_errors():
    adata = _synthetic()
    adata = adata[~((adata.obs["condition"] == "D").to_numpy() & (adata.obs["cell_type"] == "T1").to_numpy())]
    with pytest.raises(UnknownPerturbationError, match=r"perturbation 'Z' has no cell"):
        heldout_condition_split(adata, SPEC, "Z", {"cell_type": "T1"})
    with pytest.raises(UnknownPerturbationError, match=r"covariate cell_type='T7' has no cell.*'T1', 'T2'"):
        heldout_condition_split(adata, SPEC, "A", {"cell_type": "T7"})
    with pytest.raises(ValueError, match=r"no cell has perturbation 'D' with covariates.*cell_type='T2'"):
        heldout_condition_split(adata, SPEC, "D", {"cell_type": "T1"})
    with pytest.raises(KeyError, match="'donor' is not a covariate key"):
        heldout_condition_split(adata, SPEC, "A", {"donor": "x"})
    with pytest.raises(ValueError, match="the control 'control' cannot be held out"):
        heldout_condition_split(adata, SPEC, "control", {"cell_type": "T1"})
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        heldout_condition_split(adata, SPEC, "A", {"cell_type": "T1"}, val_fraction=1.0)


def test_heldout_covariate_split():
    adata = _synthetic(types=("L1", "L2", "L3"))
    only_l3 = adata.obs["condition"].isin(["F"]).to_numpy() & (adata.obs["cell_type"] != "L3").to_numpy()
    adata = adata[~only_l3].copy()  # F is measured in L3 only
    split = heldout_covariate_split(adata, SPEC, "cell_type", "L3", ["A", "C+B"], val_fraction=0.5, seed=0)
    _check_partition(split, adata.n_obs)
    held = _conditions(adata, split["val"] | split["test"])
    assert held == {("A", "L3"), ("B+C", "L3")} and len(_conditions(adata, split["val"])) == 1
    assert {("A", "L1"), ("A", "L2"), ("control", "L3")} <= _conditions(adata, split["train"])
    every = heldout_covariate_split(adata, SPEC, "cell_type", "L3")
    assert {p for p, _ in _conditions(adata, every["test"])} == {SPEC.canonical(p) for p in SINGLES + DOUBLES} - {
        "F"}
    with pytest.raises(UnknownPerturbationError, match=r"'F' has cells only with cell_type='L3'"):
        heldout_covariate_split(adata, SPEC, "cell_type", "L3", "F")
    with pytest.raises(ValueError, match=r"'F' has no cell with cell_type='L1'"):
        heldout_covariate_split(adata, SPEC, "cell_type", "L1", "F")
    with pytest.raises(UnknownPerturbationError, match=r"covariate cell_type='L9' has no cell"):
        heldout_covariate_split(adata, SPEC, "cell_type", "L9")
    with pytest.raises(KeyError, match="'line' is not a covariate key"):
        heldout_covariate_split(adata, SPEC, "line", "L3")


def test_leave_one_double_out():
    adata = _synthetic()
    split = leave_one_double_out(adata, SPEC, "B+A")
    _check_partition(split, adata.n_obs)
    assert _conditions(adata, split["test"]) == {("A+B", "T1"), ("A+B", "T2")} and not split["val"].any()
    one = leave_one_double_out(adata, SPEC, "A+B", covariates={"cell_type": "T1"})
    assert _conditions(adata, one["test"]) == {("A+B", "T1")}
    with pytest.raises(UnknownPerturbationError, match=r"'A\+E' \(cell_type='T1'\): member\(s\) 'E' never"):
        leave_one_double_out(adata, SPEC, "A+E")
    assert leave_one_double_out(adata, SPEC, "A+E", require_singles=False)["test"].sum() == 12
    with pytest.raises(ValueError, match="'A' is not a combination"):
        leave_one_double_out(adata, SPEC, "A")
    with pytest.raises(UnknownPerturbationError, match=r"'A\+Z' has no cell"):
        leave_one_double_out(adata, SPEC, "A+Z")


@pytest.mark.skipif(not DEVEL.exists(), reason="PerturBench devel file not available")
def test_devel_file_combination_and_covariate_tasks():
    adata = ad.read_h5ad(DEVEL)
    table = combinations_with_singles(adata, SPEC)
    assert sorted(table.loc[table["has_singles"], "perturbation"]) == [
        "KLF1+MAP2K6", "KLF1+TGFBR2", "MAP2K3+MAP2K6", "MAP2K3+SLC38A2", "MAPK1+TGFBR2"]
    split = combination_split(adata, SPEC, seed=0)
    _check_partition(split, adata.n_obs)
    held = {p for p, _ in _conditions(adata, split["val"] | split["test"])} - {"control"}
    assert len(held) == 3 and held <= set(table.loc[table["has_singles"], "perturbation"])
    assert not held & {p for p, _ in _conditions(adata, split["train"])}
    mcf = heldout_covariate_split(adata, SPEC, "cell_type", "U87MG", ["SGK1", "PLK4"])
    assert _conditions(adata, mcf["test"]) == {("SGK1", "U87MG"), ("PLK4", "U87MG")}
    assert {("SGK1", "A172"), ("SGK1", "k562"), ("control", "U87MG")} <= _conditions(adata, mcf["train"])
