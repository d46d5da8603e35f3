"""Query mapping (scArches architecture surgery, :func:`genjax.models.load_query_data`).

Synthetic data: 3 cell types x 3 batches of negative-binomial counts. Batches b0 and b1 differ by small random
per-gene log-fold changes; the query batch b2 also carries a shift that moves cell type 0 part of the way towards
cell type 1 (``0.6 * (de_1 - de_0)`` on the log scale), so encoding b2 as if it were a reference batch mislabels
cells, and only a learned batch term maps it correctly. The reference is trained on b0 + b1; the "full" model,
the same architecture and settings, on all three batches.

kNN label transfer (15 neighbours, majority vote, scipy's cKDTree as the neighbour search): reference cells'
latents and cell types -> the query cells' cell types.
"""

import types

import jax
import numpy as np
import pandas as pd
import pytest

anndata = pytest.importorskip("anndata")
from scipy.spatial import cKDTree  # noqa: E402

import genjax  # noqa: E402
from genjax.models import load_query_data, zero_frozen_updates  # noqa: E402

N_GENES = 80
MODEL = dict(conditions=["batch"], n_hidden=32, n_latent=6, seed=0)
REF_FIT = dict(max_epochs=60, batch_size=64, lr=3e-3, kl_warmup_epochs=10, train_size=1.0, progress=False)
QUERY_FIT = dict(max_epochs=60, batch_size=32, lr=1e-2, train_size=1.0, progress=False)


def _batched_counts(n_per: int = 200, seed: int = 0, confound: float = 0.6):
    """Cells x genes NB counts (theta 4) of 3 cell types in 3 batches; ``obs``: ``batch``, ``cell_type``."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.5, N_GENES)
    de = rng.normal(0.0, 1.5, (3, N_GENES)) * (rng.random((3, N_GENES)) < 0.3)
    batch_fx = rng.normal(0.0, 0.3, (3, N_GENES))
    batch_fx[2] += confound * (de[1] - de[0])
    xs, types, batches = [], [], []
    for b in range(3):
        t = rng.integers(0, 3, n_per)
        rho = np.exp(base + de[t] + batch_fx[b])
        rho /= rho.sum(axis=1, keepdims=True)
        mu = np.exp(rng.normal(np.log(1500.0), 0.3, n_per))[:, None] * rho
        xs.append(rng.poisson(rng.gamma(4.0, mu / 4.0)).astype(np.float32))
        types += [f"type_{i}" for i in t]
        batches += [f"b{b}"] * n_per
    obs = pd.DataFrame({"batch": pd.Categorical(batches), "cell_type": pd.Categorical(types)},
                       index=[f"cell_{i}" for i in range(len(types))])
    return anndata.AnnData(np.concatenate(xs), obs=obs, var=pd.DataFrame(index=[f"gene_{g}" for g in range(N_GENES)]))


def _knn_transfer(z_ref, labels_ref, z_query, labels_query, k: int = 15) -> float:
    """Accuracy of the majority label of each query cell's ``k`` nearest reference cells (ties: first label)."""
    _, idx = cKDTree(z_ref).query(z_query, k)
    codes, names = pd.factorize(np.asarray(labels_ref))
    votes = np.apply_along_axis(np.bincount, 1, codes[idx], minlength=len(names))
    return float(np.mean(names[votes.argmax(axis=1)] == np.asarray(labels_query)))


def _bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


@pytest.fixture(scope="module")
def data():
    adata = _batched_counts()
    is_ref = (adata.obs["batch"] != "b2").to_numpy()
    return adata, adata[is_ref].copy(), adata[~is_ref].copy()


@pytest.fixture(scope="module")
def reference(data):
    ref = genjax.VAE(data[1], **MODEL)
    ref.fit(**REF_FIT)
    return ref


@pytest.fixture(scope="module")
def mapped(data, reference):
    """(untrained surgery, trained query model) of the held-out batch."""
    query = data[2]
    before = load_query_data(query, reference)
    model = load_query_data(query, reference)
    model.fit(**QUERY_FIT)
    return before, model


def test_frozen_entries_are_bit_identical_and_new_rows_move(data, reference, mapped):
    before, model = mapped
    assert model.query_categories == {"batch": ("b2",)}
    assert model.registry.conditions["batch"] == ("b0", "b1", "b2")
    ref_flat = dict(jax.tree_util.tree_leaves_with_path(reference.params))
    n_moved = 0
    for path, value in jax.tree_util.tree_leaves_with_path(model.params):
        mask = np.asarray(_leaf(model.trainable, path))
        start = np.asarray(_leaf(before.params, path))
        new = np.asarray(value)
        ref = np.asarray(ref_flat[path])
        # the reference's entries sit unchanged at the start of every table (bit for bit)
        np.testing.assert_array_equal(_bits(new[tuple(slice(0, s) for s in ref.shape)]), _bits(ref))
        np.testing.assert_array_equal(_bits(new[~mask]), _bits(start[~mask]))
        if mask.any():
            assert not np.array_equal(new[mask], start[mask]), f"trainable {path} did not move"
            n_moved += int(mask.sum())
    # only the b2 rows of the encoder's and the decoder's batch embeddings are trainable: 2 x n_hidden entries
    assert n_moved == model.n_trainable == 2 * MODEL["n_hidden"]
    emb = np.asarray(model.params["z_encoder"]["cov_0"]["cat_0"]["embedding"])
    assert emb.shape == (3, MODEL["n_hidden"])
    # history: the reference's epochs unchanged, then the query's, marked
    n_ref = len(reference.history)
    assert n_ref == REF_FIT["max_epochs"] and model.reference_epochs == n_ref
    assert model.history[:n_ref] == reference.history
    assert len(model.history) == n_ref + QUERY_FIT["max_epochs"]
    assert all(r["stage"] == "query" for r in model.history[n_ref:])
    assert [r["epoch"] for r in model.history] == list(range(n_ref + QUERY_FIT["max_epochs"]))
    assert [r["query_epoch"] for r in model.history[n_ref:]] == list(range(QUERY_FIT["max_epochs"]))
    assert all("stage" not in r for r in model.history[:n_ref])
    # the reference cells keep their latent representation under the query model
    np.testing.assert_allclose(model.latent(data[1]), reference.latent(data[1]), rtol=0, atol=1e-6)


def _leaf(tree, path):
    for p in path:
        tree = tree[p.key]
    return tree


def test_initial_rows_follow_init(data, reference, mapped):
    """``init="mean"``: the new row is the mean of the reference rows; ``"zeros"``: zero."""
    before, _ = mapped
    for trunk in ("z_encoder", "decoder"):
        ref_rows = np.asarray(reference.params[trunk]["cov_0"]["cat_0"]["embedding"], np.float64)
        new = np.asarray(before.params[trunk]["cov_0"]["cat_0"]["embedding"])
        np.testing.assert_allclose(new[2], ref_rows.mean(axis=0), rtol=1e-6, atol=1e-7)
    zeros = load_query_data(data[2], reference, init="zeros")
    assert np.all(np.asarray(zeros.params["decoder"]["cov_0"]["cat_0"]["embedding"])[2] == 0.0)


def test_label_transfer_matches_full_model(data, reference, mapped):
    """The mapped query's kNN label-transfer accuracy is within 0.1 of the full model's (trained with the batch),
    far above chance (1/3), and clearly above encoding the query as a reference batch."""
    adata, ref_a, query = data
    _, model = mapped
    full = genjax.VAE(adata, **MODEL)
    full.fit(**REF_FIT)
    z_ref = reference.latent(ref_a)
    mapped_acc = _knn_transfer(z_ref, ref_a.obs["cell_type"], model.latent(query), query.obs["cell_type"])
    is_ref = (adata.obs["batch"] != "b2").to_numpy()
    z_full = full.latent(adata)
    full_acc = _knn_transfer(z_full[is_ref], ref_a.obs["cell_type"], z_full[~is_ref], query.obs["cell_type"])
    wrong = []
    for batch in ("b0", "b1"):
        w = query.copy()
        w.obs["batch"] = pd.Categorical([batch] * w.n_obs)
        wrong.append(_knn_transfer(z_ref, ref_a.obs["cell_type"], reference.latent(w), query.obs["cell_type"]))
    print(f"kNN label transfer: mapped {mapped_acc:.3f}, full model {full_acc:.3f}, as b0/b1 {wrong}")
    assert mapped_acc >= full_acc - 0.1
    assert mapped_acc >= 0.8
    assert mapped_acc >= max(wrong) + 0.1


def test_saved_reference_and_permuted_genes(tmp_path, data, reference, mapped):
    """A saved reference folder gives the same surgery; query genes in another order are matched by name."""
    before, _ = mapped
    query = data[2]
    reference.save(tmp_path / "ref")
    perm = np.random.default_rng(1).permutation(N_GENES)
    shuffled = query[:, perm].copy()
    from_dir = load_query_data(shuffled, tmp_path / "ref")
    for a, b in zip(jax.tree.leaves(from_dir.params), jax.tree.leaves(before.params), strict=True):
        np.testing.assert_array_equal(_bits(a), _bits(b))
    np.testing.assert_array_equal(from_dir.latent(shuffled), before.latent(query))


def test_saved_query_model_loads_as_vae(tmp_path, mapped):
    _, model = mapped
    model.save(tmp_path / "q")
    back = genjax.VAE.load(tmp_path / "q")
    assert type(back) is genjax.VAE
    assert back.history == model.history
    assert back.registry.conditions["batch"] == ("b0", "b1", "b2")
    assert len(back.training_cells.log_lib) == 600  # reference and query cells


def test_named_errors(tmp_path, data, reference):
    _, ref_a, query = data
    with pytest.raises(ValueError, match=r"2 reference gene\(s\) missing from the query: \['gene_3', 'gene_7'\]"):
        load_query_data(query[:, [g for g in query.var_names if g not in ("gene_3", "gene_7")]].copy(), reference)
    extra = anndata.AnnData(np.concatenate([query.X, np.ones((query.n_obs, 1), np.float32)], axis=1),
                            obs=query.obs, var=pd.DataFrame(index=[*query.var_names, "XIST"]))
    with pytest.raises(ValueError, match=r"1 query gene\(s\) the reference does not know: \['XIST'\]"):
        load_query_data(extra, reference)
    with pytest.raises(ValueError, match="nothing to train.*reference.latent"):
        load_query_data(ref_a, reference)
    with pytest.raises(TypeError, match="reference must be a genjax.VAE.*got a dict"):
        load_query_data(query, {"params": reference.params})
    with pytest.raises(TypeError, match=r"got a SimpleNamespace \(its VAE is reference.vae\)"):
        load_query_data(query, types.SimpleNamespace(vae=reference))
    dup = query.copy()
    dup.var_names = [*query.var_names[:-1], "gene_0"]
    with pytest.raises(ValueError, match="query gene names must be unique; 'gene_0'"):
        load_query_data(dup, reference)
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.json").write_text('{"format": "genjax.LatentGenerator/1"}')
    with pytest.raises(ValueError, match="holds 'genjax.LatentGenerator/1', not a genjax.VAE/1 model"):
        load_query_data(query, other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no genjax model"):
        load_query_data(query, tmp_path / "empty")
    no_batch = query.copy()
    del no_batch.obs["batch"]
    with pytest.raises(KeyError, match="condition 'batch' of the reference not found"):
        load_query_data(no_batch, reference)
    with pytest.raises(ValueError, match="init"):
        load_query_data(query, reference, init="random")


def test_no_new_category_with_unfrozen_first_layer_is_allowed(data, reference):
    """Known batches only: with ``unfrozen_first_layer`` the first layers train (decided: allowed)."""
    model = load_query_data(data[1], reference, unfrozen_first_layer=True)
    assert model.query_categories == {}
    p = model.params
    expected = sum(np.size(p[t][layer][name]) for t in ("z_encoder", "decoder") for layer, name in
                   (("dense_0", "kernel"), ("dense_0", "bias")))
    expected += sum(np.size(p[t]["cov_0"]["cat_0"]["embedding"]) for t in ("z_encoder", "decoder"))
    assert model.n_trainable == expected
    everything = load_query_data(data[1], reference, freeze=False)
    assert everything.n_trainable == sum(np.size(x) for x in jax.tree.leaves(p))


def test_every_category_table_grows(data):
    """gene-category dispersion, a conditional prior and a latent library per batch all get a new row; the new
    library prior is the mean and variance of the query cells' log library sizes."""
    _, ref_a, query = data
    ref = genjax.VAE(ref_a, conditions=["batch"], n_hidden=8, n_latent=3, dispersion="gene-category",
                     conditional_prior=True, library="latent", library_key="batch", inject_all_layers=True,
                     n_layers=2)
    model = load_query_data(query, ref)
    p, mask = model.params, model.trainable
    for name in ("log_disp", "prior_mean_0", "prior_logvar_0"):
        assert p[name].shape[0] == 3 and mask[name][2].all() and not mask[name][:2].any()
        np.testing.assert_allclose(np.asarray(p[name])[2], np.asarray(ref.params[name], np.float64).mean(axis=0),
                                   rtol=1e-6, atol=1e-7)
    for trunk in ("z_encoder", "l_encoder", "decoder"):
        for layer in ("cov_0", "cov_1"):
            m = mask[trunk][layer]["cat_0"]["embedding"]
            assert m.shape == (3, 8) and m[2].all() and not m[:2].any()
    log_lib = np.log(np.asarray(query.X, np.float64).sum(axis=1))
    means, varis = model.module.library_prior
    assert means[:2] == ref.module.library_prior[0] and varis[:2] == ref.module.library_prior[1]
    np.testing.assert_allclose([means[2], varis[2]], [log_lib.mean(), log_lib.var()], rtol=1e-5)


def test_zero_frozen_updates_is_exact_for_signed_zeros():
    """``p + update`` keeps frozen entries bit for bit, ``-0.0`` and ``+0.0`` included."""
    import optax

    params = {"w": np.array([-0.0, 0.0, 1.5, -2.25], np.float32)}
    mask = {"w": np.array([False, False, False, True])}
    opt = optax.chain(optax.sgd(1.0), zero_frozen_updates(mask))
    grads = {"w": np.array([3.0, -3.0, 1.0, 1.0], np.float32)}
    upd, _ = opt.update(grads, opt.init(params), params)
    out = np.asarray(optax.apply_updates(params, upd)["w"])
    np.testing.assert_array_equal(_bits(out[:3]), _bits(params["w"][:3]))
    assert out[3] == -3.25


def test_vae_fit_trainable_mask_freezes_exactly(data):
    """``VAE.fit(trainable=...)``: the decoder frozen, the encoders trained; frozen leaves bit-identical, trained
    ones moved; a mask of the wrong structure, shape or dtype is named before any compute."""
    model = genjax.VAE(data[1], **MODEL)
    before = jax.tree.map(np.asarray, model.params)
    mask = jax.tree_util.tree_map_with_path(
        lambda path, p: np.bool_("decoder" not in jax.tree_util.keystr(path)), model.params)
    model.fit(max_epochs=2, batch_size=64, train_size=1.0, progress=False, trainable=mask)
    after = jax.tree.map(np.asarray, model.params)
    moved = jax.tree_util.tree_map_with_path(
        lambda path, a, b: ("decoder" in jax.tree_util.keystr(path), bool(np.any(_bits(a) != _bits(b)))),
        before, after)
    flags = jax.tree.leaves(moved, is_leaf=lambda x: isinstance(x, tuple))
    assert any(not frozen and changed for frozen, changed in flags)
    assert not any(frozen and changed for frozen, changed in flags)
    bad_dtype = jax.tree.map(lambda p: np.ones(np.shape(p), np.float32), model.params)
    with pytest.raises(ValueError, match="dtype float32"):
        model.fit(max_epochs=1, progress=False, trainable=bad_dtype)
    bad_shape = jax.tree.map(lambda p: np.ones(np.shape(p) + (2,), bool), model.params)
    with pytest.raises(ValueError, match="not broadcastable"):
        model.fit(max_epochs=1, progress=False, trainable=bad_shape)
    with pytest.raises(ValueError, match="structure"):
        model.fit(max_epochs=1, progress=False, trainable={"params": {}})


def test_beta_with_an_unfinished_kl_warmup_warns(data):
    """A beta-VAE whose KL warm-up outlasts the run never trains at its beta: named in a warning (beta = 1, the
    scvi-tools default behaviour, stays silent)."""
    model = genjax.VAE(data[1], **MODEL)
    with pytest.warns(UserWarning, match=r"beta=4 is never reached.*KL weight 0\.02"):
        model.fit(max_epochs=1, beta=4.0, kl_warmup_epochs=200, progress=False)
