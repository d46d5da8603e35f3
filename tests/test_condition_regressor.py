"""The hybrid model's learned predictor: an MLP on condition embeddings (genjax.models.ConditionRegressor).

Checked against the truth of synthetic profiles: additive effects compose to unseen combinations; an interaction
the data carry is fitted and chosen by cross-validation; fold models never see their left-out conditions; CV+
mean intervals cover new exchangeable conditions at their nominal level."""

import jax
import numpy as np
import pytest

from genjax.data import UnknownPerturbationError
from genjax.models import ConditionRegressor, jackknife_plus

N_A, N_B, G = 6, 6, 40


def _profiles(seed=0, noise=0.05, interaction=0.0):
    rng = np.random.default_rng(seed)
    a, b, bias = rng.normal(size=(N_A, G)), rng.normal(size=(N_B, G)), rng.normal(size=G) + 2
    conds = [(f"a{i}", f"b{j}") for i in range(N_A) for j in range(N_B)]
    truth = np.stack([bias + a[i] + b[j] for i in range(N_A) for j in range(N_B)])
    # a rank-one interaction u_i v_j on 10 genes: not a sum of per-value effects
    u, v = rng.normal(size=N_A), rng.normal(size=N_B)
    truth[:, :10] += interaction * np.outer(u, v).reshape(-1, 1)
    return conds, truth, truth + noise * rng.normal(size=truth.shape)


@pytest.fixture(scope="module")
def additive_fit():
    conds, truth, y = _profiles()
    held = [0, 7, 14, 21]
    train = [k for k in range(len(conds)) if k not in held]
    reg = ConditionRegressor(steps=800).fit([conds[k] for k in train], y[train])
    return conds, truth, y, held, train, reg


def test_unseen_combinations_of_seen_values_compose(additive_fit):
    conds, truth, y, held, train, reg = additive_fit
    pred = reg.predict([conds[k] for k in held])
    err = np.abs(pred - truth[held]).mean()
    # the noise on each training profile is 0.05: composing a held-out pair costs about that, while predicting
    # the mean profile of all conditions misses by the size of the effects (~1.1)
    assert err < 0.06, err
    assert np.abs(truth[train].mean(0) - truth[held]).mean() > 0.8
    assert reg.predict([conds[0]]).shape == (1, G)


def test_fold_models_never_see_their_left_out_conditions(additive_fit):
    conds, truth, y, held, train, reg = additive_fit
    moved = y[train].copy()
    fold0 = np.flatnonzero(reg.folds == 0)
    moved[fold0] += 5.0  # change only fold 0's profiles
    one = dict(steps=800, penalties=(reg.lam_int,))  # the same penalty for both fits
    reg1 = ConditionRegressor(**one).fit([conds[k] for k in train], y[train])
    reg2 = ConditionRegressor(**one).fit([conds[k] for k in train], moved)
    np.testing.assert_array_equal(reg2.folds, reg.folds)
    for a, b in zip(jax.tree.leaves(reg1.fold_params), jax.tree.leaves(reg2.fold_params), strict=True):
        np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[0], rtol=1e-5, atol=1e-6)
    at_k, _ = reg1.cross_fit([conds[k] for k in train], [conds[held[0]]])
    at_k2, _ = reg2.cross_fit([conds[k] for k in train], [conds[held[0]]])
    checked = [i for i in fold0 if at_k[i] is not None]
    assert checked
    for i in checked:  # out-of-fold predictions of fold 0's rows do not follow their moved profiles
        np.testing.assert_allclose(at_k[i], at_k2[i], atol=1e-4)
    names = [conds[train[i]] for i in fold0]
    assert np.abs(reg2.predict(names) - reg1.predict(names)).mean() > 1.0  # while the full fit does


def test_cross_validation_picks_the_interaction_the_data_carry():
    conds, truth, y = _profiles(seed=1, interaction=3.0)
    reg = ConditionRegressor(steps=800).fit(conds, y)
    assert reg.lam_int < 1.0 and reg.cv_error.argmin() != len(reg.cv_error) - 1
    fitted = reg.predict(conds)
    assert np.abs(fitted[:, :10] - truth[:, :10]).mean() < 0.3  # the interaction is fitted, not averaged away
    additive = ConditionRegressor(steps=800).fit(*_profiles(seed=1, interaction=0.0)[::2])
    assert additive.lam_int == 1.0  # no interaction in the data: the strongest penalty wins


def test_cv_plus_intervals_cover_new_exchangeable_conditions():
    # conditions are exchangeable draws: a random 30% are new, the rest train; coverage over new (condition, gene)
    conds, truth, y = _profiles(seed=2, noise=0.3)
    rng = np.random.default_rng(0)
    covered, n = 0.0, 0
    for rep in range(2):
        perm = rng.permutation(len(conds))
        new, train = perm[:10], perm[10:]
        reg = ConditionRegressor(steps=600, seed=rep).fit([conds[k] for k in train], y[train])
        at_k, at_new = reg.cross_fit([conds[k] for k in train], [conds[k] for k in new])
        rows = [i for i, v in enumerate(at_k) if v is not None]
        resid = np.stack([np.abs(y[train[i]] - at_k[i]) for i in rows])
        for j, k in enumerate(new):
            lo, hi = jackknife_plus(resid, np.stack([at_new[i][j] for i in rows]), 0.8)
            covered += ((y[k] >= lo) & (y[k] <= hi)).sum()
            n += G
    # CV+ at 0.8 guarantees >= 1 - 2 * 0.2 minus a small fold term; in practice it covers about 0.8
    assert covered / n >= 0.75, covered / n


def test_named_errors():
    conds, truth, y = _profiles()
    with pytest.raises(ValueError, match="n_folds must be at least 2"):
        ConditionRegressor(n_folds=1)
    with pytest.raises(ValueError, match="needs >= 2 conditions"):
        ConditionRegressor().fit(conds[:1], y[:1])
    bad = y.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        ConditionRegressor().fit(conds, bad)
    reg = ConditionRegressor(steps=5).fit(conds[:12], y[:12])
    with pytest.raises(UnknownPerturbationError, match="never saw value 'a5'"):
        reg.predict([("a5", "b0")])
