"""Imports point down docs/design.md's layer table, for every module of haqc (tests/ and benchmarks/ aside).

Imports under ``if TYPE_CHECKING:`` are annotations only and do not count."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package's files live (setup.cfg's package_dir).
PACKAGES = {"haqc.passes": ROOT / "passes", "haqc.hw_targets": ROOT / "hw_targets", "haqc": ROOT / "haqc"}


def _rows() -> list[list[str]]:
    """The table's rows, top first: each a list of repository paths (a folder ends in /)."""
    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    return [re.findall(r"`([^`]+)`", line.split("|")[2]) for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| row")]


def _file(module: str) -> Path | None:
    """The file of an importable haqc module name (a package's __init__.py), or None."""
    for package, folder in PACKAGES.items():
        if module == package or module.startswith(package + "."):
            rest = module[len(package):].lstrip(".").split(".") if module != package else []
            base = folder.joinpath(*rest)
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.exists():
                    return candidate
    return None


def _row_of(path: Path, rows: list[list[str]]) -> int | None:
    rel = path.relative_to(ROOT).as_posix()
    for i, entries in enumerate(rows):
        if any(rel == e or (e.endswith("/") and rel.startswith(e)) for e in entries):
            return i
    return None


def _runtime_nodes(tree: ast.Module):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only: no import at run time)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _modules() -> list[Path]:
    files = [p for folder in PACKAGES.values() for p in folder.rglob("*.py")]
    return sorted(p for p in files if "configs" not in p.parts)


def test_every_module_has_a_row_and_imports_only_its_row_and_below():
    rows = _rows()
    assert [len(r) > 0 for r in rows] and len(rows) >= 8
    violations, unplaced = [], []
    for path in _modules():
        row = _row_of(path, rows)
        if row is None:
            unplaced.append(path.relative_to(ROOT).as_posix())
            continue
        for node in _runtime_nodes(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in (n for n in names if n == "haqc" or n.startswith("haqc.")):
                target = _file(name)
                target_row = None if target is None else _row_of(target, rows)
                if target_row is not None and target_row < row:
                    violations.append(f"{path.relative_to(ROOT)} imports {name} (row {target_row} above row {row})")
    assert not unplaced, f"modules in no row of docs/design.md's layer table: {unplaced}"
    assert not violations, "\n".join(violations)
