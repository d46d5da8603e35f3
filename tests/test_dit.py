"""The DiT field (genjax.nn.DiTField, DiTBlock, program_tokens) and its plumbing into the priors.

adaLN-Zero initialisation makes a block exactly the identity and the field exactly its read-out of the layer-normed
input tokens (recomputed here in float64 numpy); attention without positions makes a block equivariant under token
permutations, and a field under permutations of its dimensions carried with their token ids and per-dimension
parameters; a short DiT prior fit through LatentGenerator(field="dit") / fit_prior lowers its loss, samples with
conditions and guidance, and saves / loads to identical samples; bad settings fail with named errors.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import genjax
from genjax.models import fit_prior, load_prior
from genjax.nn import Condition, DiTBlock, DiTField, FieldNet, program_tokens, token_ids
from genjax.training import save_pytree


def _randomise(params, seed, scale=0.3):
    """Every parameter replaced by a normal draw (so no block is the identity any more)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda a: jnp.asarray(scale * rng.normal(size=a.shape), a.dtype), params)


def _layer_norm(h):
    h = np.asarray(h, np.float64)
    mu = h.mean(-1, keepdims=True)
    return (h - mu) / np.sqrt(((h - mu) ** 2).mean(-1, keepdims=True) + 1e-6)


def _inputs(n=5, d=7, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    t = jnp.asarray(rng.uniform(size=n), jnp.float32)
    cond = Condition(labels=jnp.asarray(rng.integers(-1, 3, size=(n, 1)), jnp.int32))
    return x, t, cond


def test_block_is_exactly_the_identity_at_init(key):
    h = jax.random.normal(key, (3, 5, 16))
    c = jax.random.normal(jax.random.fold_in(key, 1), (3, 16))
    block = DiTBlock(n_heads=4)
    params = jax.jit(block.init)(jax.random.key(1), h, c)
    apply = jax.jit(block.apply)
    np.testing.assert_array_equal(np.asarray(apply(params, h, c)), np.asarray(h))
    # the gates are what makes it so: with random parameters the block moves the tokens
    moved = apply(_randomise(params, 0), h, c)
    assert float(jnp.abs(moved - h).max()) > 0.1


def test_field_at_init_is_its_readout_of_the_embedded_tokens():
    x, t, cond = _inputs()
    ids = token_ids(3, 7)
    assert ids == (0, 0, 0, 1, 1, 1, 2)  # consecutive groups of 3, the last one short
    net = DiTField(tokens=3, n_hidden=16, n_layers=2, n_heads=2, n_categories=(3,))
    params = jax.jit(net.init)(jax.random.key(0), x, t, cond)
    p = jax.tree.map(np.asarray, params["params"])
    apply = jax.jit(net.apply)  # zero_output only changes the initialiser: one apply serves both
    out = np.asarray(apply(params, x, t, cond))
    zero = DiTField(tokens=3, n_hidden=16, n_layers=2, n_heads=2, n_categories=(3,), zero_output=True)
    np.testing.assert_array_equal(np.asarray(apply(jax.jit(zero.init)(jax.random.key(0), x, t, cond), x, t, cond)), 0.0)
    onehot = np.eye(3)[list(ids)]  # (d, T)
    h = np.einsum("nd,dw,dt->ntw", np.asarray(x, np.float64), p["dim_embedding"], onehot) + p["token_embedding"]
    y = _layer_norm(h)[:, list(ids)]  # (n, d, w): each dimension reads its token
    expected = np.einsum("ndw,dw->nd", y, p["readout_kernel"]) + p["readout_bias"]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(expected).max() > 0.1  # a non-trivial read-out
    # every modulation starts at zero: time and condition do not enter yet
    other = np.asarray(apply(params, x, 1.0 - t, Condition(labels=jnp.full((5, 1), -1, jnp.int32))))
    np.testing.assert_allclose(other, out, rtol=1e-6, atol=1e-6)


def test_block_is_equivariant_under_token_permutations(key):
    h = jax.random.normal(key, (4, 6, 16))
    c = jax.random.normal(jax.random.fold_in(key, 1), (4, 8))
    block = DiTBlock(n_heads=4, mlp_ratio=2.0)
    params = _randomise(jax.jit(block.init)(jax.random.key(1), h, c), 2)
    apply = jax.jit(block.apply)
    perm = np.array([3, 0, 5, 1, 4, 2])
    out = apply(params, h, c)
    np.testing.assert_allclose(apply(params, h[:, perm], c), out[:, perm], rtol=1e-5, atol=1e-5)
    # attention mixes tokens: a token's output depends on the others (not a per-token map)
    h2 = h.at[:, 0].set(0.0)
    assert float(jnp.abs(apply(params, h2, c)[:, 1:] - out[:, 1:]).max()) > 1e-3


def test_field_permutes_with_its_dimensions_and_ignores_token_labels(key):
    x, t, cond = _inputs(n=6, d=7, seed=1)
    ids = (2, 0, 1, 1, 2, 0, 2)
    net = DiTField(tokens=ids, n_hidden=16, n_layers=1, n_heads=4, n_categories=(3,))
    params = _randomise(jax.jit(net.init)(jax.random.key(0), x, t, cond), 1)
    out = np.asarray(jax.jit(net.apply)(params, x, t, cond))

    # dimensions permuted together with their token ids and per-dimension parameters: the output permutes
    perm = np.array([4, 6, 0, 2, 5, 1, 3])
    moved = jax.tree.map(lambda a: a, params)
    for name in ("dim_embedding", "readout_kernel", "readout_bias"):
        moved["params"][name] = params["params"][name][perm]
    net_p = DiTField(tokens=tuple(ids[i] for i in perm), n_hidden=16, n_layers=1, n_heads=4, n_categories=(3,))
    np.testing.assert_allclose(np.asarray(jax.jit(net_p.apply)(moved, x[:, perm], t, cond)), out[:, perm],
                               rtol=1e-4, atol=1e-5)

    # the token labels carry no order: relabelling them (with the token embedding rows) changes nothing
    sigma = np.array([1, 2, 0])  # token k becomes sigma[k]
    relabelled = jax.tree.map(lambda a: a, params)
    pos = np.asarray(params["params"]["token_embedding"])
    new_pos = np.empty_like(pos)
    new_pos[sigma] = pos
    relabelled["params"]["token_embedding"] = jnp.asarray(new_pos)
    net_s = DiTField(tokens=tuple(int(sigma[k]) for k in ids), n_hidden=16, n_layers=1, n_heads=4, n_categories=(3,))
    np.testing.assert_allclose(np.asarray(jax.jit(net_s.apply)(relabelled, x, t, cond)), out, rtol=1e-4, atol=1e-5)

    # and it is not a trivially symmetric map: the same permutation without moving the parameters changes it
    assert np.abs(np.asarray(jax.jit(net.apply)(params, x[:, perm], t, cond)) - out[:, perm]).max() > 1e-2


def test_jit_equals_eager_and_the_call_matches_fieldnet(key):
    x, t, cond = _inputs()
    net = DiTField(tokens=2, n_hidden=16, n_layers=1, n_heads=2, n_categories=(3,))
    params = _randomise(jax.jit(net.init)(jax.random.key(0), x, t, cond), 3)
    eager = np.asarray(net.apply(params, x, t, cond))
    jitted = np.asarray(jax.jit(net.apply)(params, x, t, cond))
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5 * np.abs(eager).max())  # float32 reassociation
    assert eager.shape == x.shape
    assert net.conditional and not DiTField().conditional
    with pytest.raises(ValueError, match="cond was given to an unconditional network"):
        DiTField(tokens=2, n_hidden=8, n_heads=2).init(key, x, t, cond)


def test_program_tokens_recover_planted_programmes_deterministically():
    rng = np.random.default_rng(0)
    truth = np.repeat([0, 1, 2, 3], 10)
    rng.shuffle(truth)
    centres = 5.0 * rng.normal(size=(4, 6))
    loadings = centres[truth] + 0.1 * rng.normal(size=(40, 6))
    ids = program_tokens(loadings, 4, seed=3)
    assert isinstance(ids, tuple) and all(type(i) is int for i in ids) and len(ids) == 40
    assert ids[0] == 0 and set(ids) == {0, 1, 2, 3}  # relabelled by first appearance, contiguous
    # the same partition as the planted programmes (up to labels)
    pairs = {(int(a), int(b)) for a, b in zip(truth, ids, strict=True)}
    assert len(pairs) == 4
    assert program_tokens(loadings, 4, seed=3) == ids
    assert program_tokens(loadings, 1) == (0,) * 40
    token_ids(ids, 40)  # a valid tokenisation of the 40 genes
    with pytest.raises(ValueError, match="loadings must be finite; found nan at gene 2, column 1"):
        program_tokens(np.where(np.arange(240).reshape(40, 6) == 13, np.nan, loadings), 4)
    with pytest.raises(ValueError, match="n_tokens must be an integer in"):
        program_tokens(loadings, 41)
    with pytest.raises(ValueError, match=r"loadings must be a \(genes, k\) matrix"):
        program_tokens(np.ones(5), 2)


def test_bad_options_fail_with_named_errors_before_compute(key):
    x, t, _ = _inputs(d=4)
    with pytest.raises(ValueError, match=r"one token id per dimension: 4 ids; got 3"):
        DiTField(tokens=(0, 1, 1), n_hidden=8, n_heads=2).init(key, x, t)
    with pytest.raises(ValueError, match=r"ids \[1\] have no dimension"):
        DiTField(tokens=(0, 2, 2, 0), n_hidden=8, n_heads=2).init(key, x, t)
    with pytest.raises(ValueError, match=r"tokens=5 is a group size and must be in \[1, d=4\]"):
        DiTField(tokens=5, n_hidden=8, n_heads=2).init(key, x, t)
    with pytest.raises(ValueError, match="dimension 1 has -1"):
        token_ids((0, -1, 0, 0), 4)
    with pytest.raises(ValueError, match="n_heads=4 must divide the token width n_hidden=30"):
        DiTField(tokens=2, n_hidden=30, n_heads=4).init(key, x, t)
    with pytest.raises(ValueError, match="n_heads=3 must divide the token width n_hidden=16"):
        DiTBlock(n_heads=3).init(key, jnp.ones((2, 3, 16)), jnp.ones((2, 16)))

    z = np.zeros((8, 4), np.float32)
    with pytest.raises(ValueError, match=r"field must be one of \('mlp', 'dit'\); got 'transformer'"):
        fit_prior(z, None, field="transformer", steps=1)
    with pytest.raises(ValueError, match=r"field_kwargs \['heads'\] are not settings of field='dit'"):
        fit_prior(z, None, field="dit", field_kwargs={"heads": 2}, steps=1)
    with pytest.raises(ValueError, match=r"4 ids; got 5"):
        fit_prior(z, None, field="dit", field_kwargs={"tokens": [0, 1, 2, 3, 4]}, steps=1)
    with pytest.raises(ValueError, match="n_hidden is given twice"):
        fit_prior(z, None, field="dit", n_hidden=32, field_kwargs={"n_hidden": 16}, steps=1)

    adata = genjax.datasets.synthetic_counts(40, 6, 2, library_size=200.0, seed=0)
    with pytest.raises(ValueError, match=r"field must be one of"):
        genjax.LatentGenerator(adata, space="log1p", field="transformer")
    with pytest.raises(ValueError, match=r"6 ids; got 2"):
        genjax.LatentGenerator(adata, space="log1p", field="dit", field_kwargs={"tokens": (0, 1)})
    with pytest.raises(ValueError, match=r"field_kwargs \['tokens'\] are not settings of field='mlp'"):
        genjax.LatentGenerator(adata, space="log1p", field_kwargs={"tokens": 2})


def test_dit_prior_fits_samples_with_guidance_and_round_trips(tmp_path):
    adata = genjax.datasets.synthetic_counts(160, 8, 2, library_size=400.0, seed=1)
    log1p = np.log1p(np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X))
    z = (log1p - log1p.mean(0)) / (log1p.std(0) + 1e-6)
    ids = program_tokens(np.linalg.svd(z, full_matrices=False)[2][:3].T, 3)
    gen = genjax.LatentGenerator(adata, prior="flow", conditions=["cell_type"], space="log1p", field="dit",
                                 field_kwargs={"tokens": ids, "n_hidden": 16, "n_layers": 1, "n_heads": 2})
    gen.fit(prior_steps=150, prior_batch_size=64, prior_lr=3e-3, progress=False)
    losses = [r["loss"] for r in gen.history["prior"]]
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
    assert isinstance(gen.prior_model.module, DiTField) and gen.prior_model.module.tokens == ids
    config = gen.prior_model.config()
    assert config["net"]["arch"] == "dit" and config["net"]["tokens"] == list(ids)

    # conditions and guidance reach the DiT: guided samples differ from plain ones, all finite
    cat = np.repeat([[0], [1]], 10, axis=0).astype(np.int32)
    kw = {"n_steps": 4}
    plain = gen.sample_latent(20, seed=3, cat=cat, guidance=1.0, **kw)  # weight 1: the plain conditional field
    guided = gen.sample_latent(20, seed=3, cat=cat, guidance=3.0, **kw)
    assert plain.shape == guided.shape == (20, 8) and np.isfinite(guided).all()
    assert np.abs(guided - plain).max() > 1e-3

    gen.save(tmp_path / "gen")
    saved = json.loads((tmp_path / "gen" / "model.json").read_text())
    assert saved["prior"]["net"]["arch"] == "dit"
    back = genjax.LatentGenerator.load(tmp_path / "gen")
    assert back.prior_model.config() == config
    np.testing.assert_array_equal(back.sample_latent(20, seed=3, cat=cat, guidance=3.0, **kw), guided)

    # the prior alone: config + parameters rebuild it exactly (a JSON round trip of the config included)
    save_pytree(tmp_path / "prior.msgpack", gen.prior_model.params)
    prior = load_prior(json.loads(json.dumps(config)), tmp_path / "prior.msgpack")
    assert prior.module is gen.prior_model.module  # one shared module per configuration: no recompilation
    jax.tree.map(np.testing.assert_array_equal, prior.params, gen.prior_model.params)


def test_priors_saved_before_the_dit_load_as_fieldnet(tmp_path, key):
    net = FieldNet(n_hidden=8, n_layers=1, n_categories=(2,))
    params = jax.jit(net.init)(key, jnp.zeros((1, 3)), jnp.ones((1,)), Condition(labels=jnp.zeros((1, 1), jnp.int32)))
    save_pytree(tmp_path / "p.msgpack", params)
    old = {"family": "flow", "dim": 3, "net": {"n_hidden": 8, "n_layers": 1, "n_categories": [2]}}  # no "arch"
    prior = load_prior(old, tmp_path / "p.msgpack")
    assert isinstance(prior.module, FieldNet) and prior.arch == "mlp"
    assert prior.config()["net"] == old["net"]
    with pytest.raises(ValueError, match=r"prior field \(net.arch\) must be one of"):
        load_prior({**old, "net": {**old["net"], "arch": "unet"}}, tmp_path / "p.msgpack")
