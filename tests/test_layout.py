"""The package's layout stays honest: no import cycle between its modules (module-level and function-level imports
alike), few top-level modules; the subpackages follow the data flow state -> codecs -> container -> store ->
sessions -> integration -> apps, bench, cli, and library code never imports an app, a benchmark or the CLI."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "seqkv_edge"
MAX_TOP_LEVEL = 14
FRONT_ENDS = ("seqkv_edge.apps", "seqkv_edge.bench", "seqkv_edge.cli")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for target in candidates:
                while target and target not in modules:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != name and not name.startswith(target + "."):  # a package's own __init__
                    targets.add(target)
        edges[name] = targets
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_and_few_top_level_modules():
    edges = _imports(_modules())
    assert _cycles(edges) == []
    assert len(list(PACKAGE.glob("*.py"))) <= MAX_TOP_LEVEL


def test_library_code_never_imports_an_app_a_benchmark_or_the_cli():
    edges = _imports(_modules())
    library = [m for m in edges if not m.startswith(FRONT_ENDS) and m not in ("seqkv_edge.__main__",)]
    wrong = {m: sorted(t for t in edges[m] if t.startswith(FRONT_ENDS)) for m in library}
    assert {m: t for m, t in wrong.items() if t} == {}


def test_codecs_never_import_calibration_sessions_or_the_store():
    edges = _imports(_modules())
    upward = ("seqkv_edge.calibrate", "seqkv_edge.sessions", "seqkv_edge.store", "seqkv_edge.container")
    wrong = {m: sorted(t for t in targets if t.startswith(upward))
             for m, targets in edges.items() if m.startswith(("seqkv_edge.codecs", "seqkv_edge.state"))}
    assert {m: t for m, t in wrong.items() if t} == {}
