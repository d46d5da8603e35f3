"""The genjax command as a user meets it: help texts, exit codes, flag names in messages, --layer, --n-top-genes,
checkpoint location, provenance of written files, one-line warnings, the compilation cache, progress in logs.

One tiny latent generator is trained once per module (scanpy-convention input: log-normalised X, raw counts in
``layers["counts"]``) and reused by the tests.
"""

import argparse
import contextlib
import io
import os
import re
import subprocess
import sys
import time

import anndata as ad
import numpy as np
import pytest

import genjax
from genjax.cli import build_parser, compilation_cache_dir, main

TINY = ["--vae-epochs", "2", "--prior-steps", "60"]


@pytest.fixture(autouse=True)
def _no_persistent_cache(monkeypatch):
    """In-process commands must not point this test process's JAX at a persistent cache."""
    monkeypatch.setenv("GENJAX_NO_COMPILATION_CACHE", "1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with ``counts.h5ad`` (raw counts in X), ``scanpy.h5ad`` (log1p CP10k in X, counts in
    ``layers["counts"]``) and ``model/``: a generator trained on scanpy.h5ad --layer counts --n-top-genes 20 with
    --keep-checkpoints; ``progress`` holds what the training run wrote to stderr (not a TTY)."""
    d = tmp_path_factory.mktemp("usability")
    data = genjax.datasets.synthetic_counts(150, 30, 3, library_size=500.0, seed=2)
    data.write_h5ad(d / "counts.h5ad")
    X = data.X.toarray() if hasattr(data.X, "toarray") else np.asarray(data.X)
    scanpy = ad.AnnData(X=np.log1p(X / X.sum(1, keepdims=True) * 1e4).astype(np.float32), obs=data.obs,
                        var=data.var, layers={"counts": X})
    scanpy.write_h5ad(d / "scanpy.h5ad")
    err = io.StringIO()
    env = {"GENJAX_NO_COMPILATION_CACHE": os.environ.get("GENJAX_NO_COMPILATION_CACHE")}
    os.environ["GENJAX_NO_COMPILATION_CACHE"] = "1"
    try:
        t0 = time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["train", "--data", str(d / "scanpy.h5ad"), "--layer", "counts", "--n-top-genes", "20",
                         "--condition-key", "cell_type", "--out", str(d / "model"), "--keep-checkpoints", *TINY])
        seconds = time.perf_counter() - t0
    finally:
        if env["GENJAX_NO_COMPILATION_CACHE"] is None:
            del os.environ["GENJAX_NO_COMPILATION_CACHE"]
    assert code == 0, err.getvalue()
    return {"dir": d, "data": data, "progress": err.getvalue(), "seconds": seconds}


@pytest.fixture(scope="module")
def generated(trained):
    """``gen.h5ad``: 40 cells of cell_type type_1 generated from the trained model (seed 5, guidance 2)."""
    out = trained["dir"] / "gen.h5ad"
    env = os.environ.get("GENJAX_NO_COMPILATION_CACHE")
    os.environ["GENJAX_NO_COMPILATION_CACHE"] = "1"
    try:
        code = main(["generate", "--model", str(trained["dir"] / "model"), "--n", "40", "--out", str(out), "--seed",
                     "5", "--guidance", "2", "--condition", "cell_type=type_1", "--quiet"])
    finally:
        if env is None:
            del os.environ["GENJAX_NO_COMPILATION_CACHE"]
    assert code == 0
    return out


def _subcommands(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_has_help_and_every_command_says_what_it_writes(capsys):
    parser = build_parser()
    commands = _subcommands(parser)
    assert set(commands) == {"demo", "train", "generate", "predict", "evaluate"}
    for name, sub in commands.items():
        assert "writes" in sub.description, name
        for action in sub._actions:
            assert action.help and len(action.help) > 10, f"{name} {action.option_strings} has no help text"
        assert "writes" in sub.format_help()  # the help texts format (a stray % would raise)
        flags = {s for a in sub._actions for s in a.option_strings}
        assert {"--quiet", "--no-compilation-cache", "--debug", "--seed"} <= flags, name
        if name in ("train", "predict", "evaluate"):  # the commands that read counts from a file
            assert "--layer" in flags, name
    assert "--keep-checkpoints" in {s for a in commands["train"]._actions for s in a.option_strings}
    with pytest.raises(SystemExit) as ex:
        main(["--version"])
    assert ex.value.code == 0 and genjax.__version__ in capsys.readouterr().out
    with pytest.raises(SystemExit) as ex:
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert ex.value.code == 0 and "OUT.ckpt" in text and "train.json" in text and "exit status" in text


def test_usage_errors_exit_2_and_compute_failures_exit_1(trained, capsys, monkeypatch):
    d = trained["dir"]
    gen = ["generate", "--model", str(d / "model"), "--out", str(d / "x.h5ad")]
    for argv, flag in [
        (["generate", "--model", str(d / "nope"), "--n", "5", "--out", str(d / "x.h5ad")], "--model"),
        (["train", "--data", str(d), "--out", str(d / "m")], "--data"),  # a folder, not a file
        (["train", "--data", str(d / "missing.h5ad"), "--out", str(d / "m")], "--data"),
        ([*gen, "--n", "5", "--condition", "cell_type=neuron"], "neuron"),
        (["predict", "--model", str(d / "model"), "--data", str(d / "counts.h5ad"), "--perturbation", "A",
          "--out", str(d / "p.h5ad")], "genjax predict needs a perturbation or hybrid model"),
        (["evaluate", "--real", str(d / "scanpy.h5ad"), "--layer", "nope", "--generated",
          str(d / "counts.h5ad"), "--out", str(d / "ev")], "--layer nope"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert flag in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for argv, flag in [([*gen, "--n", "0"], "--n"), ([*gen, "--n", "5", "--guidance", "nan"], "--guidance"),
                       ([*gen, "--n", "5", "--bogus"], "--bogus")]:
        with pytest.raises(SystemExit) as ex:  # argparse: the flag is named, exit 2
            main(argv)
        assert ex.value.code == 2 and flag in capsys.readouterr().err

    def diverge(self, *a, **k):
        raise FloatingPointError("the sampler produced NaN")

    monkeypatch.setattr(genjax.LatentGenerator, "generate", diverge)
    assert main([*gen, "--n", "5"]) == 1
    err = capsys.readouterr().err
    assert "failed: FloatingPointError: the sampler produced NaN" in err and "Traceback" not in err


def test_messages_name_flags_not_python_keywords(trained, capsys):
    d = trained["dir"]
    # a scanpy file without --layer: the counts are in layers["counts"], X is log-normalised
    assert main(["train", "--data", str(d / "scanpy.h5ad"), "--out", str(d / "m"), *TINY, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "--layer counts" in err and "has the layers counts" in err, err
    assert "layer=" not in err and "likelihood=" not in err and "adata." not in err, err
    assert main(["evaluate", "--real", str(d / "scanpy.h5ad"), "--generated", str(d / "counts.h5ad"), "--out",
                 str(d / "ev")]) == 2
    err = capsys.readouterr().err
    assert "--real" in err and "--layer counts" in err and "check_counts" not in err and "layer=" not in err, err
    assert not (d / "m.ckpt").exists()  # a refused run leaves no checkpoint folder behind


def test_n_top_genes_selects_seurat_v3_genes_and_generate_and_evaluate_use_them(trained, generated, capsys):
    d = trained["dir"]
    expected = trained["data"].copy()
    genjax.data.highly_variable_genes(expected, n_top_genes=20)  # the same counts, independently
    genes = set(expected.var_names[expected.var["highly_variable"]])
    record = __import__("json").loads((d / "model" / "train.json").read_text())
    assert record["gene_selection"]["method"] == "seurat_v3" and set(record["gene_selection"]["genes"]) == genes
    assert record["layer"] == "counts" and record["genes"] == 20
    assert set(genjax.LatentGenerator.load(d / "model").var_names) == genes
    assert set(ad.read_h5ad(generated).var_names) == genes
    # scanpy-convention real cells (all 30 genes, counts in a layer) are scored on the model's 20 genes
    assert main(["evaluate", "--real", str(d / "scanpy.h5ad"), "--layer", "counts", "--generated", str(generated),
                 "--out", str(d / "ev"), "--condition-key", "cell_type"]) == 0
    captured = capsys.readouterr()
    assert "scoring the 20 genes of --generated (of the 30 in --real)" in captured.out
    assert "energy_distance" in captured.out


def test_checkpoints_are_kept_inside_the_model_only_when_asked(trained, capsys):
    d = trained["dir"]
    assert not (d / "model.ckpt").exists()
    assert (d / "model" / "checkpoints" / "vae").is_dir() and (d / "model" / "checkpoints" / "prior").is_dir()
    base = ["train", "--data", str(d / "counts.h5ad"), "--out", str(d / "model"), "--n-top-genes", "20",
            "--condition-key", "cell_type", *TINY, "--quiet"]
    assert main(base) == 2  # a new run would lose the kept checkpoints
    err = capsys.readouterr().err
    assert "already holds the checkpoints" in err and "--resume" in err and "--restart" in err
    assert (d / "model" / "checkpoints" / "vae").is_dir() and not (d / "model.ckpt").exists()  # left as they were
    # (tests/test_cli.py: without --keep-checkpoints nothing is left beside or inside the model)


def test_generated_files_carry_provenance_and_integer_library_sizes(trained, generated):
    d = trained["dir"]
    gen = ad.read_h5ad(generated)
    info = gen.uns["genjax"]
    assert info["genjax_version"] == genjax.__version__ and info["seed"] == 5 and info["guidance"] == 2.0
    assert info["model"] == str((d / "model").resolve()) and info["conditions"] == {"cell_type": "type_1"}
    assert info["command"].startswith("genjax generate --model") and "--seed 5" in info["command"]
    assert info["gene_selection"] == "seurat_v3 top 20 genes" and info["training_layer"] == "counts"
    lib = gen.obs["library_size"].to_numpy()
    assert np.issubdtype(lib.dtype, np.integer) and (lib > 0).all()


def test_warnings_are_one_clean_line_in_the_commands_words(trained, tmp_path, capfd):
    # integer cells that all sum to 1000 look like rounded normalised data: the count check warns
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(40), size=3)
    real = ad.AnnData(X=np.stack([rng.multinomial(1000, p[i % 3]) for i in range(90)]).astype(np.float32))
    real.var_names = [f"g{j}" for j in range(40)]
    real.write_h5ad(tmp_path / "real.h5ad")
    real.write_h5ad(tmp_path / "gen.h5ad")
    assert main(["evaluate", "--real", str(tmp_path / "real.h5ad"), "--generated", str(tmp_path / "gen.h5ad"),
                 "--out", str(tmp_path / "ev"), "--quiet"]) == 0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("genjax: warning: ")]
    assert any("look normalised" in line and "--layer counts" in line for line in lines), err
    assert not re.search(r"\w+Warning\b|warnings\.warn|\.py:\d+|layer=|likelihood=", err), err


def test_compilation_cache_folder_and_opt_outs(tmp_path, monkeypatch, capsys):
    home = str(tmp_path / "home")
    assert compilation_cache_dir(environ={"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "genjax" / "jax"
    monkeypatch.setenv("HOME", home)
    assert compilation_cache_dir(environ={}) == tmp_path / "home" / ".cache" / "genjax" / "jax"
    assert compilation_cache_dir(environ={"JAX_COMPILATION_CACHE_DIR": "/x/y"}) == __import__("pathlib").Path("/x/y")
    assert compilation_cache_dir(disabled=True, environ={"XDG_CACHE_HOME": str(tmp_path)}) is None
    for value in ("1", "yes", "true"):
        assert compilation_cache_dir(environ={"GENJAX_NO_COMPILATION_CACHE": value}) is None
    assert compilation_cache_dir(environ={"GENJAX_NO_COMPILATION_CACHE": "0", "XDG_CACHE_HOME": "/c"}) is not None
    # in-process with an opt-out (the variable, then the flag): nothing created, JAX's setting untouched
    import jax

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    argv = ["evaluate", "--real", "missing.h5ad", "--generated", "missing.h5ad", "--out", str(tmp_path / "ev")]
    assert main(argv) == 2
    monkeypatch.delenv("GENJAX_NO_COMPILATION_CACHE")
    assert main([*argv, "--no-compilation-cache"]) == 2
    assert "--real missing.h5ad: no such file" in capsys.readouterr().err
    assert not (tmp_path / "xdg").exists() and jax.config.jax_compilation_cache_dir == before


@pytest.mark.slow
def test_a_command_process_persists_what_it_compiles(tmp_path):
    """In a fresh process, main() points JAX at the user cache folder before anything compiles, and every compiled
    program (however small) is written there."""
    script = ("import sys, jax; from genjax.cli import main; rc = main(['evaluate', '--real', 'missing.h5ad', "
              "'--generated', 'missing.h5ad']); jax.jit(lambda x: x * 3 + 1)(2.0).block_until_ready(); "
              "print(jax.config.jax_compilation_cache_dir); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if k != "GENJAX_NO_COMPILATION_CACHE"}
    done = subprocess.run([sys.executable, "-c", script], env={**env, "XDG_CACHE_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=300)
    cache = tmp_path / "genjax" / "jax"
    assert done.returncode == 2 and "--real missing.h5ad: no such file" in done.stderr, done.stderr
    assert done.stdout.strip() == str(cache) and any(cache.iterdir())


def test_progress_in_a_log_is_a_few_lines_per_run(trained):
    text = trained["progress"]
    assert "\r" not in text
    vae = [line for line in text.splitlines() if "] VAE: " in line]
    prior = [line for line in text.splitlines() if "] prior: " in line]
    slack = int(trained["seconds"] // 30)  # a line every 30 s besides the one per 10% of the steps
    assert 1 <= len(vae) <= 11 + slack and 5 <= len(prior) <= 11 + slack, text  # not one line per step (60)
    assert all("epoch" in line for line in vae[:-1]) and not any("epoch" in line for line in prior), text


def test_the_first_eta_excludes_compilation(capsys):
    """A run whose first dispatch compiles: the ETA shown at 10% is computed from the steps after that dispatch,
    so it is below the whole run's time (an ETA from the average since the start, compilation included, would be
    about 9x the compile time, above it)."""
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)

    def loss_fn(params, batch, key, step):
        return ((batch @ params["w"]) ** 2).mean(), {}

    t0 = time.perf_counter()
    genjax.fit(loss_fn, {"w": np.ones((3, 2), np.float32)}, x, max_steps=300, batch_size=8, steps_per_dispatch=1,
               progress=True, description="toy")
    seconds = time.perf_counter() - t0
    lines = [line for line in capsys.readouterr().err.splitlines() if "toy:" in line]
    etas = [_seconds(m.group(1)) for line in lines if (m := re.search(r"ETA ([\d.]+ s|[\d:]+)", line))]
    assert etas and etas[0] < seconds, (lines, seconds)
    assert len(lines) <= 12 and not any("epoch" in line for line in lines), lines


def _seconds(text: str) -> float:
    """``"4.2 s"``, ``"12:05"`` or ``"1:02:03"`` in seconds."""
    if text.endswith(" s"):
        return float(text[:-2])
    total = 0.0
    for part in text.split(":"):
        total = 60 * total + float(part)
    return total
