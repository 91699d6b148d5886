"""The dependency rule, read from the source with ``ast`` (nothing is imported):

    posecast/  (the CLI, demo, bench, stress, server_process)  may import anything
    clients/   -> realtime/, models/
    realtime/  -> models/
    trainer/   -> models/
    models/    -> models/ only

Every import counts: ``import x`` and ``from x import y``, relative ones, and those inside functions (a lazy import
is still a dependency), plus ``python -m MODULE`` command lines built as string lists (a subprocess that re-runs
a module depends on it as much as an import does). Module-level import cycles inside the project are refused too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: package -> the project packages it may import (itself included). ``None``: anything.
ALLOWED: dict[str, frozenset[str] | None] = {
    "models": frozenset({"models"}),
    "trainer": frozenset({"trainer", "models"}),
    "realtime": frozenset({"realtime", "models"}),
    "clients": frozenset({"clients", "realtime", "models"}),
    "posecast": None,
}
PACKAGES = tuple(ALLOWED)


def module_name(path: Path) -> str:
    """``realtime/engine.py`` -> ``realtime.engine``; ``models/__init__.py`` -> ``models``."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(module: str, source: str, is_package: bool = False) -> list[tuple[int, str, bool]]:
    """(line, absolute module name, at module level) of every import in ``source``, relative ones resolved."""
    tree = ast.parse(source)
    base = module.split(".") if is_package else module.split(".")[:-1]
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # imports under a module-level if/try still run at import time
        if isinstance(node, (ast.If, ast.Try)):
            top_level.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        at_top = id(node) in top_level
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, at_top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from pkg import x``: x may be a module (``from realtime import protocol``); names are resolved to
            # the module that holds them later (``project_imports``).
            found += [(node.lineno, f"{target}.{alias.name}" if alias.name != "*" else target, at_top)
                      for alias in node.names]
        elif isinstance(node, (ast.List, ast.Tuple)):  # [sys.executable, "-m", "pkg.mod", ...]
            items = [e.value if isinstance(e, ast.Constant) and isinstance(e.value, str) else None for e in node.elts]
            found += [(node.lineno, items[i + 1], False) for i in range(len(items) - 1)
                      if items[i] == "-m" and items[i + 1]]
    return found


def project_files() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 30, f"found only {len(files)} files under {PACKAGES}: is ROOT right? ({ROOT})"
    return files


def _as_module(target: str, modules: set[str]) -> str:
    """The project module an import names: ``models.render.render_labels`` -> ``models.render`` (itself if none)."""
    name = target
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or target


def project_imports() -> dict[str, list[tuple[Path, int, str, bool]]]:
    """module -> [(file, line, imported project module, at module level)] over every package's .py files."""
    files = {module_name(p): p for p in project_files()}
    graph = {}
    for mod, path in files.items():
        seen, edges = set(), []
        for line, target, top in imports_of(mod, path.read_text(), path.name == "__init__.py"):
            target = _as_module(target, set(files))
            if target.split(".")[0] in PACKAGES and (line, target) not in seen:
                seen.add((line, target))
                edges.append((path, line, target, top))
        graph[mod] = edges
    return graph


def violations(graph) -> list[str]:
    out = []
    for mod, edges in graph.items():
        allowed = ALLOWED[mod.split(".")[0]]
        for path, line, target, _ in edges:
            if allowed is not None and target.split(".")[0] not in allowed:
                out.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return out


def test_the_checker_sees_every_kind_of_import():
    src = ("import realtime.server\nfrom clients import capture\nfrom .sibling import thing\nfrom .. import up\n"
           "def f():\n    from trainer.train import Trainer\n    import posecast.cli as cli\n"
           "cmd = [sys.executable, '-m', 'posecast', 'serve']\n"
           "try:\n    import models.lite\nexcept ImportError:\n    pass\n")
    got = {(line, target, top) for line, target, top in imports_of("models.sub.mod", src)}
    assert got == {(1, "realtime.server", True), (2, "clients.capture", True), (3, "models.sub.sibling.thing", True),
                   (4, "models.up", True), (6, "trainer.train.Trainer", False), (7, "posecast.cli", False),
                   (8, "posecast", False), (10, "models.lite", True)}
    assert _as_module("trainer.train.Trainer", {"trainer", "trainer.train"}) == "trainer.train"
    fake = {"models.sub.mod": [(ROOT / "models/sub/mod.py", line, t, top) for line, t, top in sorted(got)]}
    assert violations(fake) == ["models/sub/mod.py:1 imports realtime.server",
                                "models/sub/mod.py:2 imports clients.capture",
                                "models/sub/mod.py:6 imports trainer.train.Trainer",
                                "models/sub/mod.py:7 imports posecast.cli", "models/sub/mod.py:8 imports posecast"]
    # __init__.py: relative imports are relative to the package itself
    assert imports_of("models", "from .render import x\n", is_package=True) == [(1, "models.render.x", True)]


def test_layers_point_one_way():
    bad = violations(project_imports())
    assert not bad, ("imports against the layer rule (clients -> realtime -> models, trainer -> models, posecast on "
                     "top):\n  " + "\n  ".join(bad))


def test_no_import_cycles_between_modules():
    graph = project_imports()
    modules = set(graph)
    edges: dict[str, dict[str, tuple[Path, int]]] = {m: {} for m in modules}
    for mod, found in graph.items():
        for path, line, dst, at_top in found:
            # module level only: a lazy import inside a function cannot deadlock a module's loading; a package's
            # own __init__ (an ancestor) is no edge back.
            if dst in modules and dst != mod and not mod.startswith(dst + "."):
                edges[mod].setdefault(dst, (path, line))
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    report = []
    for comp in cycles:
        for a in comp:
            for b, (path, line) in edges[a].items():
                if b in comp:
                    report.append(f"{path.relative_to(ROOT)}:{line} imports {b}")
    assert not cycles, "import cycles between modules " + str(cycles) + ":\n  " + "\n  ".join(report)
