"""Griffe extension for genjax's API reference (loaded by ``mkdocs.yml``; not part of the package).

What the stock Google-style reading of genjax's docstrings gets wrong:

1. **Re-exports are the public API.** The subpackages keep their code in private ``_x.py`` files and re-export the
   public names with a redundant alias (``from ._batch import CountBatch as CountBatch``, the diffrax / equinox
   convention of ``STYLE.md``). Griffe treats every imported name as private unless it is listed in ``__all__``,
   so ``::: genjax.data`` would render the module docstring and nothing else. Here such an alias is public.
2. **Several parameters per entry.** genjax documents related arguments together (``adata, spec: the cells and
   where their labels are.``). Griffe looks the whole string up in the signature and warns. mkdocs.yml turns
   griffe's own check off (``warn_unknown_params: false``) and this extension does the same check per name
   instead, with the same warning, so a documented parameter that is not in the signature still fails
   ``mkdocs build --strict``.
3. **Continuation lines at the item indent.** In an ``Arguments:`` / ``Attributes:`` / ``Raises:`` section, a
   wrapped line indented like an item (not one level deeper) is read as a new item: griffe drops it with a
   warning ("Failed to get 'name: description' pair") or, when it starts with ``:``, crashes. A line there that
   does not begin like an item (``name:``, ``name (type):``, ``a, b:``, ``ExceptionName:``,
   ``KeyError / ValueError:``) is re-indented as the continuation it is (in memory only), and an INFO line names
   it so that the docstring can be fixed.
4. **Sphinx roles.** The docstrings cross-reference with Sphinx roles (``:func:`nb_log_prob```,
   ``:class:`~genjax.data.Condition```), which Markdown shows verbatim. Each role becomes a link to the object's
   entry in the reference (an optional autorefs link: a name the reference does not render, such as a private
   helper or another library's class, stays plain code), resolved the way Python would resolve the name in the
   docstring's scope; ``~`` shows the last component only, as in Sphinx.
5. **Other reStructuredText.** A simple table (columns framed by ``====  ====`` lines) becomes a Markdown table,
   and a paragraph ending in ``::`` before an indented block ends in ``:`` (the block is a code block in both).
6. **``Fields:`` sections.** genjax lists the fields of NamedTuples and dataclasses under ``Fields:``, which
   griffe would show as one run-on paragraph; they are read as the ``Attributes:`` section they are.
"""

from __future__ import annotations

import ast
import contextlib
import re
from typing import Any

import griffe

# Google-style sections whose bodies are lists of ``name: description`` items.
_ITEM_SECTIONS = {
    "args", "arguments", "params", "parameters", "keyword args", "keyword arguments", "other args",
    "other arguments", "other params", "other parameters", "raises", "exceptions", "attributes", "warns",
    "warnings",
}
# How an item starts: one or more names (``*args``, dotted exception names; ``a, b`` or ``KeyError / ValueError``),
# an optional ``(type)``, a colon.
_ITEM_HEAD = re.compile(
    r"^\*{0,2}[A-Za-z_][\w.]*(?:\s*[,/]\s*\*{0,2}[A-Za-z_][\w.]*)*(?:\s+\(.*\))?:(?:\s|$)")
_PARSE_OPTIONS = {"warnings": False, "returns_multiple_items": False}
_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj):`(~?)([A-Za-z_][\w.]*)`")
# Modules replaced by another one at import (``sys.modules[...] = ...``): griffe sees the stub file.
_MODULE_ALIASES = {
    "genjax.metrics": "genjax.evaluation.metrics",
    "genjax.plots": "genjax.evaluation.plots",
    "genjax.report": "genjax.evaluation.report",
    "genjax.datasets": "genjax.data.datasets",
}


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def normalise_continuations(text: str) -> tuple[str, list[int]]:
    """Re-indent continuation lines written at the item indent of a Google-style item section.

    Arguments:
        text: a docstring as griffe stores it (dedented).

    Returns:
        ``(text, lines)``: the docstring with those lines indented one item level deeper, and their 0-based line
        numbers within the docstring.
    """
    lines = text.split("\n")
    fixed = []
    i = 0
    while i < len(lines):
        header = lines[i]
        i += 1
        if not (header.endswith(":") and header[:-1].strip().lower() in _ITEM_SECTIONS and _indent(header) == 0):
            continue
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i == len(lines) or _indent(lines[i]) == 0:
            continue
        item = _indent(lines[i])
        i += 1
        while i < len(lines):
            line = lines[i]
            if line.strip():
                if _indent(line) < item:
                    break
                if _indent(line) == item and not _ITEM_HEAD.match(line.strip()):
                    lines[i] = " " * item + line
                    fixed.append(i)
            i += 1
    return "\n".join(lines), fixed


def _columns(border: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"=+", border)]


def _cells(line: str, cols: list[tuple[int, int]]) -> list[str]:
    """The cells of a table row; the last column runs to the end of the line."""
    return [line[a:(b if k < len(cols) - 1 else None)].strip() for k, (a, b) in enumerate(cols)]


def rst_simple_tables(text: str) -> str:
    """Convert reStructuredText simple tables (``===  ===`` borders, one header row) to Markdown tables.

    A row whose first cell is empty continues the row above (as in reST); the last column runs to the line end.
    """
    lines = text.split("\n")
    border = re.compile(r"^=+( +=+)+ *$")
    out, i = [], 0
    while i < len(lines):
        if not (border.match(lines[i]) and i + 2 < len(lines) and border.match(lines[i + 2])):
            out.append(lines[i])
            i += 1
            continue
        cols = _columns(lines[i])
        end = next((j for j in range(i + 3, len(lines)) if border.match(lines[j])), None)
        if end is None:
            out.append(lines[i])
            i += 1
            continue
        rows: list[list[str]] = []
        for line in lines[i + 3:end]:
            if not line.strip():
                continue
            row = _cells(line, cols)
            if rows and not row[0]:
                rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], row, strict=True)]
            else:
                rows.append(row)
        header = _cells(lines[i + 1], cols)
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "|".join("---" for _ in header) + "|")
        out.extend("| " + " | ".join(row) + " |" for row in rows)
        i = end + 1
    return "\n".join(out)


def fields_as_attributes(text: str) -> str:
    """A ``Fields:`` section header -> ``Attributes:`` (the fields of a NamedTuple or dataclass)."""
    return re.sub(r"(?m)^Fields:$", "Attributes:", text)


def rst_literal_markers(text: str) -> str:
    """``text::`` followed by a blank line and an indented block -> ``text:`` (the block stays a code block)."""
    return re.sub(r"(?m)(\S)::\n(?=\n+ {4})", r"\1:\n", text)


def check_parameter_names(obj: griffe.Object) -> None:
    """Warn, as griffe does, for each documented parameter name that is not in the signature."""
    try:
        names = {p.name for p in obj.parameters}  # functions; classes: their __init__ when griffe sees one
    except Exception:  # an __init__ inherited from a base griffe cannot load (flax, equinox)
        names = set()
    if obj.is_class:  # dataclass-style fields (dataclasses, equinox and flax modules) are the __init__ arguments
        names |= {name for name, member in obj.members.items() if member.is_attribute}
    sections = obj.docstring.parse("google", **_PARSE_OPTIONS)
    for section in sections:
        if section.kind not in (griffe.DocstringSectionKind.parameters,
                                griffe.DocstringSectionKind.other_parameters):
            continue
        for entry in section.value:
            for name in entry.name.split(","):
                name = name.strip().lstrip("*")
                if name and name not in names:
                    griffe.logger.warning(
                        f"{obj.relative_filepath}:{obj.docstring.lineno}: {obj.path}: parameter '{name}' (documented "
                        f"as '{entry.name}') does not appear in the function signature")


def _lookup(root: griffe.Module, path: str) -> griffe.Object | griffe.Alias:
    """The object at dotted ``path`` (``genjax.x.y``), following re-exports."""
    obj = root
    for part in path.split(".")[1:]:
        obj = obj[part]
    return obj


def resolve_role_target(obj: griffe.Object, name: str, root: griffe.Module) -> str | None:
    """The canonical path of the object a role in ``obj``'s docstring names, or ``None`` if it is not genjax's."""
    for alias, module in _MODULE_ALIASES.items():
        if name == alias or name.startswith(alias + "."):
            name = module + name[len(alias):]
    try:
        if name == root.name or name.startswith(root.name + "."):
            try:
                return _lookup(root, name).canonical_path
            except Exception:  # ``genjax.X`` resolved by the package's ``__getattr__``: X from a subpackage
                rest = name[len(root.name) + 1:]
                for sub in root.modules.values():
                    if not sub.name.startswith("_"):
                        with contextlib.suppress(Exception):
                            return _lookup(root, f"{sub.path}.{rest}").canonical_path
                raise
        first, _, rest = name.partition(".")
        target = _lookup(root, obj.resolve(first))
        for part in filter(None, rest.split(".")):
            target = target[part]
        return target.canonical_path
    except Exception:  # not resolvable in genjax (another library's name, a typo): plain code
        return None


def link_roles(obj: griffe.Object, root: griffe.Module) -> str:
    """``obj``'s docstring with each Sphinx role replaced by an optional autorefs link (plain code if unresolved)."""

    def replace(match: re.Match) -> str:
        tilde, name = match.groups()
        title = f"<code>{name.rsplit('.', 1)[-1] if tilde else name}</code>"
        target = resolve_role_target(obj, name, root)
        if target is None:
            return title
        return f'<autoref identifier="{target}" optional>{title}</autoref>'

    return _ROLE.sub(replace, obj.docstring.value)


def _walk(obj: griffe.Object, seen: set[str]):
    if obj.path in seen:
        return
    seen.add(obj.path)
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member, seen)


class GenjaxDocstrings(griffe.Extension):
    """The adjustments listed in the module docstring, for genjax's API reference."""

    def on_alias_instance(self, *, node: ast.AST | griffe.ObjectNode, alias: griffe.Alias, **kwargs: Any) -> None:
        if isinstance(node, ast.ImportFrom):
            for imported in node.names:
                if imported.asname == imported.name == alias.name:
                    alias.public = True
                    return

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        text = fields_as_attributes(rst_literal_markers(rst_simple_tables(obj.docstring.value)))
        text, fixed = normalise_continuations(text)
        obj.docstring.value = text
        if fixed:
            for line in fixed:
                griffe.logger.info(
                    f"{obj.relative_filepath}:{obj.docstring.lineno + line}: {obj.path}: a continuation line at the "
                    "item indent is read as a continuation (indent it one level deeper in the source)")

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg, set()):
            if obj.docstring is None:
                continue
            if obj.is_function or obj.is_class:
                check_parameter_names(obj)
            obj.docstring.value = link_roles(obj, pkg)
