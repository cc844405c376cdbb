"""Module rules: no module reaches into another's private (underscore) names (STYLE: one owner per helper), and
dependencies point one way (layers and models know nothing of serving, training or files)."""

from __future__ import annotations

import ast
from pathlib import Path

import userlens

SRC = Path(userlens.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def violations(path: Path, module: str | None = None) -> list[str]:
    """``file:line: what`` for each private name of another userlens module this file imports or reads."""
    module = module or _module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    out: list[str] = []
    imported: dict[str, str] = {}  # local name bound by an import → the userlens module or object it names
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(node, module, path.name == "__init__.py")
            if not source.startswith("userlens"):
                continue
            for alias in node.names:
                if source != module and _private(alias.name):
                    out.append(f"{path}:{node.lineno}: from {source} import {alias.name}")
                imported[alias.asname or alias.name] = f"{source}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("userlens"):
                    imported[alias.asname or alias.name.split(".")[0]] = alias.asname and alias.name or "userlens"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in imported:
                target = ".".join([imported[value.id], *reversed(chain)])
                if not target.startswith(module + "."):
                    out.append(f"{path}:{node.lineno}: {value.id}.{'.'.join(reversed(chain))}")
    return out


def test_no_module_uses_another_modules_private_names() -> None:
    found = [v for p in sorted(SRC.rglob("*.py")) for v in violations(p)]
    assert not found, "private names used across modules (make them public and documented, or move them):\n" + \
        "\n".join(found)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return out | {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}


def test_layers_and_models_import_nothing_above_them() -> None:
    """``layers`` and ``models`` take tensors and return logits: serving state reaches a GSU only through
    ``LongHistory.state`` (the ``SearchState`` protocol), never by an import."""
    above = ("userlens.serving", "userlens.training", "userlens.data", "userlens.cli", "userlens.demo")
    found = [f"{p}: {m}" for d in ("layers", "models") for p in sorted((SRC / d).rglob("*.py"))
             for m in _imports(p) if m.startswith(above)]
    assert not found, "\n".join(found)


def test_the_check_sees_both_forms(tmp_path: Path) -> None:
    """A from-import of a private name and an attribute read through an imported module are both caught."""
    probe = tmp_path / "probe.py"
    probe.write_text("from userlens.data.prepare import _sha256\nfrom userlens.layers import gsu\n"
                     "import userlens.data.tables as t\nfrom . import _mine\n"
                     "x = gsu._chunks\ny = t._closest\nz = gsu.__name__\n")
    got = violations(probe, module="userlens.layers.probe")
    assert [g.split(": ", 1)[1] for g in got] == ["from userlens.data.prepare import _sha256",
                                                   "from userlens.layers import _mine", "gsu._chunks", "t._closest"]
