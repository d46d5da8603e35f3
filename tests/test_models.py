"""The shared base of the user classes: one behaviour for requested conditions no training cell has, one naming
of generated cells, one JSON encoder, one saved-model format with named errors."""

import json

import numpy as np
import pandas as pd
import pytest

import genjax
from genjax.models import NoMatchingCellsError


@pytest.fixture(scope="module")
def two_conditions():
    adata = genjax.datasets.synthetic_counts(60, 12, 2, library_size=300.0, seed=2)
    types = np.asarray(adata.obs["cell_type"]).astype(str)
    # batch "b1" only ever holds type_1 cells: (type_0, b1) is a combination no training cell has
    adata.obs["batch"] = pd.Categorical(np.where((types == "type_1") & (np.arange(60) % 2 == 0), "b1", "b0"))
    return adata


def test_vae_generate_refuses_a_combination_no_training_cell_has(two_conditions):
    vae = genjax.VAE(two_conditions, conditions=["cell_type", "batch"], n_hidden=8, n_latent=2)
    with pytest.raises(NoMatchingCellsError, match=r"no training cell has the conditions \{'cell_type': 'type_0', "
                                                    r"'batch': 'b1'\}"):
        vae.generate(5, cell_type="type_0", batch="b1")
    # per-cell requests: each cell draws from the training cells matching its own combination
    out = vae.generate(6, seed=1, cell_type=["type_0", "type_1", "type_1"] * 2, batch=["b0", "b1", "b0"] * 2)
    assert list(out.obs["batch"].astype(str)) == ["b0", "b1", "b0"] * 2
    assert list(out.obs_names[:2]) == ["gen-0", "gen-1"]
    lib = out.obs["library_size"].to_numpy()
    np.testing.assert_array_equal(lib, np.rint(lib))  # totals are whole numbers, not 366.999908


def test_generate_validates_n(two_conditions):
    vae = genjax.VAE(two_conditions, n_hidden=8, n_latent=2)
    for bad in (0, -3, 2.7, "4"):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            vae.generate(bad)
    assert vae.generate(3.0).n_obs == 3


def test_metadata_that_json_cannot_hold_is_refused_before_anything_is_written(tmp_path, two_conditions):
    vae = genjax.VAE(two_conditions, n_hidden=8, n_latent=2)
    vae.save(tmp_path / "m")
    before = sorted(p.name for p in (tmp_path / "m").iterdir())
    vae.history = [{"epoch": 0, "loss": np.float32(1.5), "note": object()}]
    with pytest.raises(TypeError, match="cannot save a object in model metadata"):
        vae.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == before  # the earlier model is untouched
    genjax.VAE.load(tmp_path / "m")
    vae.history = [{"epoch": 0, "loss": np.float32(1.5), "rows": np.arange(2)}]  # numpy values are stored
    vae.save(tmp_path / "m")
    assert genjax.VAE.load(tmp_path / "m").history == [{"epoch": 0, "loss": 1.5, "rows": [0, 1]}]


def test_saved_model_errors_name_the_problem(tmp_path, two_conditions):
    vae = genjax.VAE(two_conditions, n_hidden=8, n_latent=2)
    with pytest.raises(FileNotFoundError, match="no genjax model"):
        genjax.VAE.load(tmp_path / "nothing")
    vae.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["format"] == "genjax.VAE/1" and meta["genjax_version"] == genjax.__version__
    with pytest.raises(ValueError, match="not a genjax.LatentGenerator/1 model"):
        genjax.LatentGenerator.load(tmp_path / "m")
    (tmp_path / "m" / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"model.json is not valid JSON"):
        genjax.VAE.load(tmp_path / "m")
    with pytest.raises(FileExistsError):
        vae.save(tmp_path / "m", overwrite=False)


def test_latent_generator_unseen_combination_with_library_conditions(two_conditions):
    """A combination no training cell has is refused by default, and generated when ``library_conditions`` names
    the training cells that supply library sizes; the cells keep the requested conditions."""
    gen = genjax.LatentGenerator(two_conditions, prior="flow", conditions=["cell_type", "batch"],
                                 vae_kwargs=dict(n_hidden=8, n_latent=2), prior_kwargs=dict(n_hidden=16, n_layers=1))
    gen.fit(vae_epochs=1, prior_steps=4, progress=False)
    with pytest.raises(NoMatchingCellsError, match="no training cell has the conditions"):
        gen.generate(4, cell_type="type_0", batch="b1")
    out = gen.generate(8, seed=3, cell_type="type_0", batch="b1", library_conditions={"cell_type": "type_0",
                                                                                        "batch": "b0"})
    assert (out.obs["cell_type"].astype(str) == "type_0").all() and (out.obs["batch"].astype(str) == "b1").all()
    source = two_conditions[(two_conditions.obs["cell_type"].astype(str) == "type_0").to_numpy()
                            & (two_conditions.obs["batch"].astype(str) == "b0").to_numpy()]
    libraries = set(np.rint(np.asarray(source.X.sum(1))).ravel().astype(int).tolist())
    assert set(out.obs["library_size"].astype(int)) <= libraries
