"""The documentation site (mkdocs.yml, docs/) stays in step with the code, without building it.

``mkdocs build --strict`` (run by .ci/run) catches broken links and cross-references; these checks are cheap and
name the fix: every ``::: genjax...`` reference imports, the reference covers every public subpackage and every
headline name, every example script and CLI command has its place, the index's quickstart is the README's, and the
griffe extension that reads genjax's docstrings (docs/griffe_genjax.py) does what it says.
"""

import argparse
import importlib
import importlib.util
import logging
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = re.compile(r"^:::\s+(\S+)\s*$", re.MULTILINE)
# The public subpackages the API reference documents (the alias modules under their real names).
SUBPACKAGES = {
    "genjax", "genjax.data", "genjax.data.datasets", "genjax.likelihoods", "genjax.nn", "genjax.vae",
    "genjax.diffusion", "genjax.flow", "genjax.fields", "genjax.solvers", "genjax.training", "genjax.models",
    "genjax.evaluation", "genjax.evaluation.metrics", "genjax.evaluation.plots", "genjax.evaluation.report",
    "genjax.cli",
}


def _pages() -> dict[str, str]:
    return {str(p.relative_to(DOCS)): p.read_text() for p in sorted(DOCS.rglob("*.md"))}


def _references() -> list[tuple[str, str]]:
    return [(page, ident) for page, text in _pages().items() for ident in REFERENCE.findall(text)]


def _resolve(identifier: str):
    """The object a dotted path names: the longest importable module prefix, then attributes."""
    parts = identifier.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ModuleNotFoundError:
            continue
        for attr in parts[n:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(identifier)


def _load_docs_module(name: str):
    spec = importlib.util.spec_from_file_location(f"genjax_docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_reference_names_an_importable_object():
    refs = _references()
    assert refs, "no ::: references found under docs/"
    bad = []
    for page, ident in refs:
        if not ident.startswith("genjax"):
            bad.append(f"{page}: ::: {ident} (not a genjax name)")
            continue
        try:
            _resolve(ident)
        except (ImportError, AttributeError) as err:
            bad.append(f"{page}: ::: {ident} ({type(err).__name__}: {err})")
    assert not bad, "API reference entries that do not import:\n" + "\n".join(bad)


def test_reference_covers_every_public_subpackage():
    documented = {ident for _, ident in _references()}
    missing = SUBPACKAGES - documented
    assert not missing, f"public subpackages without an API page (add docs/api/<name>.md with '::: <name>'): {missing}"
    # and every subpackage genjax itself imports is one of them (a new layer needs a page)
    import genjax

    # (by the modules' own names: the aliases genjax.metrics, ... are genjax.evaluation.metrics, ...)
    subpackages = {value.__name__ for name, value in vars(genjax).items()
                   if not name.startswith("_") and type(value).__name__ == "module"
                   and value.__name__.startswith("genjax.")}
    assert "genjax.evaluation.metrics" in subpackages
    assert subpackages <= SUBPACKAGES, f"subpackages without an API page: {subpackages - SUBPACKAGES}"


def test_top_level_page_lists_every_headline_name():
    import genjax

    headline = sorted(name for name, value in vars(genjax).items()
                      if not name.startswith("_") and type(value).__name__ != "module")
    page = (DOCS / "api" / "genjax.md").read_text()
    missing = [name for name in headline if f"[genjax.{name}][]" not in page]
    assert headline and not missing, f"docs/api/genjax.md does not list {missing} as [genjax.NAME][]"


def test_examples_page_mentions_every_example_script():
    page = (DOCS / "examples.md").read_text()
    scripts = sorted(p.name for p in (ROOT / "examples").glob("*.py"))
    assert scripts
    missing = [name for name in scripts if f"examples/{name}" not in page]
    assert not missing, f"docs/examples.md does not mention {missing} (as `examples/<name>.py`)"


def test_included_files_exist():
    snippet = re.compile(r'^--8<--\s+"([^":]+)(?::[-0-9:,]*)?"\s*$', re.MULTILINE)
    included = [(page, path) for page, text in _pages().items() for path in snippet.findall(text)]
    assert ("benchmarks.md", "benchmarks/README.md") in included
    assert ("examples.md", "examples/README.md") in included
    assert all((ROOT / path).is_file() for _, path in included), included


def test_index_quickstart_is_the_readmes():
    index = (DOCS / "index.md").read_text()
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", index, re.DOTALL)
    assert block, "docs/index.md has no ```bash block under '## Quickstart'"
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    readme = (ROOT / "README.md").read_text()
    assert len(commands) == 2
    missing = [c for c in commands if c not in readme.splitlines()]
    assert not missing, f"docs/index.md quickstart commands not in README.md: {missing}"


def test_cli_page_has_the_help_of_every_command():
    from genjax.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    page = (DOCS / "guide" / "cli.md").read_text()
    markers = set(re.findall(r"<!-- genjax-help: *([a-z-]+) *-->", page))
    assert markers == set(sub.choices), f"docs/guide/cli.md help markers {markers} != commands {set(sub.choices)}"
    hooks = _load_docs_module("hooks")
    assert hooks.help_text("train").startswith("usage: genjax train")
    with pytest.raises(ValueError, match="unknown command"):
        hooks.help_text("no-such-command")


# The griffe extension (docs/griffe_genjax.py), on small docstrings with known answers (skipped without the
# docs extra, which brings griffe).

def test_continuation_lines_at_item_indent_are_reindented():
    pytest.importorskip("griffe")
    g = _load_docs_module("griffe_genjax")
    text = ("Summary.\n\nArguments:\n    x: first line\n    continues here.\n    y, z: two names.\n\n"
            "Raises:\n    ValueError: bad ``x``. KeyError: a key\n    missing.\n    OSError / KeyError: two kinds.\n\n"
            "After the section.")
    out, fixed = g.normalise_continuations(text)
    lines = out.split("\n")
    assert fixed == [4, 9]
    assert lines[4] == "        continues here." and lines[9] == "        missing."
    assert lines[5] == "    y, z: two names." and lines[3] == "    x: first line"
    assert lines[10] == "    OSError / KeyError: two kinds."
    assert lines[-1] == "After the section."
    assert g.normalise_continuations("Arguments:\n    a: ok.\n    b: ok.") == ("Arguments:\n    a: ok.\n    b: ok.", [])


def test_rst_simple_table_becomes_markdown():
    pytest.importorskip("griffe")
    g = _load_docs_module("griffe_genjax")
    text = "Intro\n\n====  ==========\nkey   meaning\n====  ==========\na     first\n      more\nb     second\n====  ==========\nend"
    assert g.rst_simple_tables(text) == (
        "Intro\n\n| key | meaning |\n|---|---|\n| a | first more |\n| b | second |\nend")
    assert g.rst_literal_markers("Formula::\n\n    y = x") == "Formula:\n\n    y = x"
    assert g.fields_as_attributes("Doc.\n\nFields:\n    a: x.") == "Doc.\n\nAttributes:\n    a: x."


def test_parameter_check_splits_names_and_flags_stale_ones(caplog):
    griffe = pytest.importorskip("griffe")
    g = _load_docs_module("griffe_genjax")
    code = '''
def f(adata, spec, seed=0):
    """Doc.

    Arguments:
        adata, spec: the cells and where their labels are.
        seeds: a stale name.
    """
'''
    module = griffe.visit("m", filepath=Path("m.py"), code=code)
    with caplog.at_level(logging.WARNING):
        g.check_parameter_names(module["f"])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "parameter 'seeds'" in messages[0], messages


def test_roles_resolve_to_canonical_paths():
    griffe = pytest.importorskip("griffe")
    g = _load_docs_module("griffe_genjax")
    pkg = griffe.load("genjax", search_paths=[str(ROOT)])
    likelihoods = pkg["likelihoods"]
    assert g.resolve_role_target(likelihoods, "nb_log_prob", pkg) == "genjax.likelihoods._log_prob.nb_log_prob"
    assert g.resolve_role_target(likelihoods, "genjax.VAE", pkg) == "genjax.models._vae.VAE"
    assert g.resolve_role_target(likelihoods, "genjax.metrics.evaluate", pkg) == "genjax.evaluation._evaluate.evaluate"
    assert g.resolve_role_target(likelihoods, "genjax.TrainState", pkg) == "genjax.training._state.TrainState"
    assert g.resolve_role_target(likelihoods, "anndata.AnnData", pkg) is None
