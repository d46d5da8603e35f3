"""The folder tree is the architecture: lower layers never import higher ones, and no file takes another file's
``_underscore`` name. Walks the source with ``ast`` (nothing is imported), so it also sees function-local imports.

Layers, lowest first (``genjax/<folder>``): shared base modules (``_typing``, ``_checks``, ``_version``) -> data -> likelihoods
-> nn -> {vae, diffusion, flow} (peers: none imports another) -> fields -> solvers -> training -> models ->
evaluation -> the interface (``cli``, the package ``__init__`` and the alias modules ``genjax.metrics``, ...).
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "genjax"
LAYERS = {
    "_typing": 0, "_checks": 0, "_version": 0,
    "data": 1,
    "likelihoods": 2,
    "nn": 3,
    "vae": 4, "diffusion": 4, "flow": 4,
    "fields": 5,
    "solvers": 6,
    "training": 7,
    "models": 8,
    "evaluation": 9,
    "cli": 10, "__init__": 10, "metrics": 10, "plots": 10, "report": 10, "datasets": 10,
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The layer unit of a genjax module: its top folder, or the top-level file's name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path):
    """``(line, absolute target module, imported names)`` of every genjax import in ``path``."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "genjax":
                    yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "genjax":
                yield node.lineno, target, [a.name for a in node.names]


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_source_file_has_a_layer():
    units = {_unit(_module(p)) for p in SOURCES}
    assert units <= set(LAYERS), f"files outside the layer table: {sorted(units - set(LAYERS))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_upward_or_sideways_import(path):
    here = _unit(_module(path))
    bad = []
    for line, target, names in _imports(path):
        targets = [target] if target != "genjax" else [f"genjax.{n}" for n in names]
        for t in targets:
            there = _unit(t)
            if there == here or there not in LAYERS:
                continue
            if LAYERS[there] > LAYERS[here] or (LAYERS[there] == LAYERS[here] == LAYERS["vae"]):
                bad.append(f"line {line}: {here} (layer {LAYERS[here]}) imports {t} (layer {LAYERS[there]})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_name_crosses_a_file(path):
    bad = [f"line {line}: from {target} import {n}" for line, target, names in _imports(path) for n in names
           if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("folder", ["tests", "examples", "benchmarks"])
def test_users_import_only_public_modules(folder):
    """Tests, examples and benchmarks use the public API: no ``genjax._x`` / ``genjax.sub._x`` module and no
    underscore name."""
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("genjax"):
                mods, names = node.module.split("."), [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                mods, names = [], []
                for a in node.names:
                    if a.name.startswith("genjax"):
                        mods += a.name.split(".")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute | ast.Name):
                # genjax.sub._private attribute access
                chain, value = [node.attr], node.value
                while isinstance(value, ast.Attribute):
                    chain.append(value.attr)
                    value = value.value
                if not (isinstance(value, ast.Name) and value.id == "genjax"):
                    continue
                mods, names = chain[::-1], []
            else:
                continue
            private = [m for m in mods + names if m.startswith("_") and not m.startswith("__")]
            if private:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {'.'.join(mods)} {names}")
    assert not bad, "\n".join(bad)
