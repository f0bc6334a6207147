"""No import cycle anywhere in ``sleepjax`` or ``pallas_kernels`` (lazy imports included).

Every ``import`` / ``from ... import`` in every module, wherever it sits in the file, is an
edge to the project module it names (``from pkg import name`` is an edge to ``pkg.name`` when
that is a module, else to ``pkg``). A cycle -- even one hidden behind a function-level import --
means two modules cannot be understood or loaded on their own.
"""

from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("sleepjax", "pallas_kernels")


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _edges(name: str, path: pathlib.Path, modules) -> set[str]:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:     # `import a.b.c` of a module a.b.c
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _edges(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 30
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_detector_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_only_sleepjax_ops_imports_the_kernel_package():
    """The model reaches the gated delta rule through ``sleepjax.ops`` only (one API, one place
    for the grouped-value-head expansion), never through ``pallas_kernels`` modules."""
    modules = _modules()
    kernel_imports = {name: sorted(t for t in _edges(name, path, modules)
                                   if t.split(".")[0] == "pallas_kernels")
                      for name, path in modules.items() if name.split(".")[0] == "sleepjax"}
    assert kernel_imports["sleepjax.ops.gated_delta_rule"]          # the detector sees the one home
    offenders = {name: targets for name, targets in kernel_imports.items()
                 if targets and not name.startswith("sleepjax.ops")}
    assert not offenders, f"import the gated delta rule from sleepjax.ops: {offenders}"
