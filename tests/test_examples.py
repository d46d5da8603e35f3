"""Every example in examples/ runs end to end in its ``--smoke`` mode and writes its figures and summary.

The examples are run in this process (``main(["--smoke", "--out", tmp])``) so that they share JAX's compilation
cache and skip the interpreter start-up; XLA's optimisation passes are switched off while they run
(``jax_disable_most_optimizations``): the smoke runs do a few steps on tiny data, where compiling dominates.
A subprocess checks the script entry point that examples/README.md tells users to run.
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FIGURES = {
    "sde_basics": ["forward.png", "marginals.png", "score.png", "samples.png", "trajectories.png", "training.png"],
    "likelihoods": ["accuracy.png", "dispersion.png", "zinb.png", "svi.png"],
    "pbmc3k_cvae_nb": ["latent.png", "reconstruction.png", "counterfactual.png", "evaluation_panel.png",
                       "training.png"],
    "gene_expression_diffusion": ["part1_pca.png", "part1_genes.png", "part2_evaluation_panel.png",
                                  "training.png"],
    "flow_matching": ["guidance.png", "evaluation_panel.png", "latent_pca.png", "training.png"],
    "data_parallel": ["training.png"],
    "perturbation": ["logfc.png", "energy.png", "interaction.png"],
    "hybrid_uncertainty": ["reliability.png", "coverage.png"],
    "scvi_users": ["latent.png", "de.png", "expression.png", "training.png"],
    "model_zoo": ["objectives.png", "disentanglement.png", "traversal.png"],
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(name: str):
    """Import ``examples/<name>.py`` as a module. Its folder goes first on ``sys.path`` as when Python runs the
    script, so its ``from common import ...`` finds ``examples/common.py``."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"genjax_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the Config annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fast_compile():
    """Compile without XLA's expensive optimisation passes while an example runs."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def _numbers(tree, path=""):
    """(path, value) for every number in a JSON tree."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path, tree


def _check_outputs(out: Path, name: str, returned: dict | None = None) -> dict:
    for fig in FIGURES[name]:
        path = out / fig
        assert path.is_file(), f"{name} did not write {fig}; wrote {sorted(p.name for p in out.iterdir())}"
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000, f"{fig} is not a real PNG"
    summary = json.loads((out / "summary.json").read_text())  # strict JSON: NaN / Infinity would fail below
    assert summary["figures"] == FIGURES[name]
    assert summary["backend"] == jax.default_backend()
    numbers = dict(_numbers({k: v for k, v in summary.items() if k != "config"}))
    assert len(numbers) >= 5, numbers
    bad = {p: v for p, v in numbers.items() if not math.isfinite(v)}
    assert not bad, f"{name} summary has non-finite numbers: {bad}"
    md = (out / "summary.md").read_text()
    assert md.startswith("# ") and "backend" in md
    if returned is not None:
        assert returned["figures"] == summary["figures"]
    return summary


@pytest.mark.parametrize("name", ["sde_basics", "likelihoods", "pbmc3k_cvae_nb", "gene_expression_diffusion",
                                  "flow_matching", "data_parallel", "perturbation", "hybrid_uncertainty",
                                  "scvi_users", "model_zoo"])
def test_example_smoke(name, tmp_path, fast_compile, capsys):
    module = _load(name)
    out = tmp_path / name
    returned = module.main(["--smoke", "--out", str(out)])
    printed = capsys.readouterr().out
    assert f"JAX backend: {jax.default_backend()}" in printed
    summary = _check_outputs(out, name, returned)
    if name == "data_parallel":  # two processes reproduce one process with two devices
        assert summary["max_param_diff_processes_vs_devices"] < 1e-4
    if name == "perturbation":  # the model and the baselines it is measured against, in the same table
        for part in ("heldout_type", "doubles"):
            methods = summary[part]["methods"]
            assert {"genjax compositional", "genjax scgen", "baseline no_change"} <= set(methods), methods
        assert "baseline additive" in summary["doubles"]["methods"]
        assert "baseline mean_delta" in summary["heldout_type"]["methods"]
    if name == "model_zoo":  # every model beside what it is compared with, in one table
        assert set(summary["objectives"]) == {"ELBO", "IWAE-3", "IWAE-3 + DReG"}
        assert set(summary["field_networks"]) == {"FieldNet (MLP)", "DiTField (latent tokens)"}
        assert all(0.0 <= row["mig_rotated"] <= 1.0 for row in summary["disentanglement"].values())
    if name == "scvi_users":  # the query mapped by genjax, beside the PCA baseline of the same cells
        assert set(summary["mapping"]) == {"genjax", "pca"}
    if name == "hybrid_uncertainty":  # the hybrid beside the calibration baselines, every score present
        assert set(summary["methods"]) == {"hybrid", "predictor + NB (control dispersions)", "no change (controls)"}
        assert all(0.0 <= m["pit_in_0.05_0.95"] <= 1.0 and m["crps"] > 0 for m in summary["methods"].values())


def test_smoke_config_is_tiny_and_flags_override():
    """--smoke shrinks every size, explicit flags win over presets, unknown values are rejected."""
    module = _load("sde_basics")
    default, smoke = module.parse_config([]), module.parse_config(["--smoke"])
    assert smoke.train_steps < default.train_steps and smoke.n_samples < default.n_samples
    assert module.parse_config(["--smoke", "--train-steps", "7"]).train_steps == 7
    assert module.parse_config(["--full"]).train_steps > default.train_steps
    assert Path(default.out) == EXAMPLES / "out" / "sde_basics"
    with pytest.raises(SystemExit):
        module.parse_config(["--train-steps", "many"])


def test_example_script_entry_point():
    """``python examples/<name>.py ...`` (the command of examples/README.md) in a fresh interpreter: the script
    imports, parses its flags and documents --smoke / --full (main() itself is run by the tests above)."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / "sde_basics.py"), "--help"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--smoke" in proc.stdout and "--full" in proc.stdout and "--train-steps" in proc.stdout
