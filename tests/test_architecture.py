"""The layers of docs/architecture.md, checked on the source: who may import whom, and no cycles.

Every `import` and `from ... import` counts, at module level or inside a function (a lazy
import is still a dependency). A package's `__init__` counts as the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("auditor", "export", "t2i_audit")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {
        _module_name(p): p
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {target for target in _imports(path, name) if target in modules and target != name}
    return graph


GRAPH = _graph()


def _package(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_sees_lazy_imports():
    # auditor.workflow imports the evidence module inside a function only
    assert "auditor.evidence" in GRAPH["auditor.workflow"]
    assert len(GRAPH) > 60


def test_auditor_imports_neither_export_nor_the_cli():
    wrong = sorted(
        (m, t)
        for m, targets in GRAPH.items()
        if _package(m) == "auditor"
        for t in targets
        if _package(t) != "auditor"
    )
    assert wrong == []


def test_export_never_imports_the_cli():
    wrong = sorted(
        (m, t)
        for m, targets in GRAPH.items()
        if _package(m) == "export"
        for t in targets
        if _package(t) == "t2i_audit"
    )
    assert wrong == []


def test_runtime_code_never_imports_the_exporter():
    """The audit opens bundles through auditor.backends.engines; the exporter is a build-time tool."""
    users = sorted(
        m for m, targets in GRAPH.items() if "export.exporter" in targets and _package(m) == "auditor"
    )
    assert users == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_no_import_cycles():
    """Modules inside a package import their siblings directly, never through the package's
    __init__ (which re-exports them all, and so would close a cycle)."""
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_module_is_much_over_500_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 520
    }
    assert long == {}


def _private_reach_ins(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(importer, target) where the target is a private module (`_name`) of a package the importer
    is not inside: such a module is its package's business, and what others need of it belongs on
    the package's public face (its __init__)."""
    found = set()
    for module, targets in graph.items():
        for target in targets:
            parts = target.split(".")
            private = next(
                (i for i, p in enumerate(parts) if p.startswith("_") and not p.startswith("__")), None
            )
            if private is None:
                continue
            package = ".".join(parts[:private])
            if module != package and not module.startswith(package + "."):
                found.add((module, target))
    return found


def test_no_module_reaches_into_another_packages_private_modules():
    assert _private_reach_ins(GRAPH) == set()


def test_the_reach_in_check_sees_reach_ins():
    graph = {"a.b": {"a._c", "d._e.f"}, "a._c": set(), "d._e.f": {"d._e.g"}, "d": {"d._e"}}
    assert _private_reach_ins(graph) == {("a.b", "d._e.f")}


def test_every_package_declares_its_public_api():
    for init in sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        names = [
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name)
        ]
        assert "__all__" in names, f"{init.relative_to(ROOT)} has no __all__"


# The layers of auditor/ (docs/architecture.md): a module imports its own layer or lower ones.
LAYERS = {
    1: ("errors", "config", "fileio", "documents", "deadline", "progress", "images", "distance", "text"),
    2: ("keys", "weights", "identity", "commitment", "signing"),
    3: (
        "verdict_test",
        "calibration",
        "binomial_rule",
        "window_test",
        "key_null_test",
        "verdict_tests",
        "multitest",
        "metrics",
        "discriminator",
        "watermark",
    ),
    4: ("backends",),
    5: ("finetune", "references"),
    6: ("selection", "audit", "report", "evidence", "figures", "views"),
    7: ("workflow", "key_selection", "batch", "serve", "shadow", "demo", "zoo", "reproduction"),
}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "auditor" or len(parts) < 2:
        return None
    return next((n for n, names in LAYERS.items() if parts[1] in names), None)


def test_every_auditor_module_has_a_layer():
    assert [m for m in GRAPH if m.startswith("auditor.") and _layer(m) is None] == []


def test_modules_import_only_their_layer_or_lower_ones():
    wrong = sorted(
        (m, t)
        for m, targets in GRAPH.items()
        if (layer := _layer(m)) is not None
        for t in targets
        if (other := _layer(t)) is not None and other > layer
    )
    assert wrong == []


def _package_exports(init: Path, package: str) -> tuple[list[str], set[str], bool]:
    """(__all__, the public names the __init__ binds from its own package or defines, whether its
    __all__ lists submodules rather than names)."""
    tree = ast.parse(init.read_text(encoding="utf-8"))
    exported: list[str] = []
    bound: set[str] = set()
    lazy: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            for item in node.value.elts:  # a literal list; `*_PUBLIC` spreads the lazy table
                exported += lazy if isinstance(item, ast.Starred) else [ast.literal_eval(item)]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package + "."):
            bound.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):  # a lazy table of names
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id == "_PUBLIC":
                    lazy = list(ast.literal_eval(node.value))
                    bound.update(lazy)
    bound = {n for n in bound if not n.startswith("_") and n != "annotations"} | (
        {"__version__"} if "__version__" in exported else set()
    )
    submodules = {p.stem for p in init.parent.glob("*.py") if not p.stem.startswith("_")} | {
        p.name for p in init.parent.iterdir() if p.is_dir() and (p / "__init__.py").is_file()
    }
    lists_modules = bool(exported) and set(exported) <= submodules and not bound
    return exported, bound, lists_modules


def _all_problems(init: Path, package: str) -> list[str]:
    exported, bound, lists_modules = _package_exports(init, package)
    problems = []
    if len(set(exported)) != len(exported):
        problems.append(f"{package}: a name twice in __all__")
    if lists_modules:
        modules = {p.stem for p in init.parent.glob("*.py") if not p.stem.startswith("_")}
        modules |= {p.name for p in init.parent.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
        if set(exported) != modules:
            problems.append(
                f"{package}: __all__ {sorted(exported)} but the public submodules are {sorted(modules)}"
            )
    elif set(exported) != bound:
        problems.append(f"{package}: __all__ differs from what it binds by {sorted(set(exported) ^ bound)}")
    return problems


def test_every_all_list_is_what_its_package_offers():
    """Each `__all__` holds every public name its __init__ binds from the package (or its lazy
    table), no name twice and nothing it does not offer; a package that offers no names lists
    its public submodules, all of them."""
    inits = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py"))
    assert [p for init in inits for p in _all_problems(init, _module_name(init))] == []


def test_the_all_check_sees_stale_lists(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("")
    (package / "b.py").write_text("")
    (package / "__init__.py").write_text('__all__ = ["a"]\n')
    assert "public submodules" in _all_problems(package / "__init__.py", "pkg")[0]
    (package / "__init__.py").write_text('from pkg.a import f, g\n__all__ = ["f", "h"]\n')
    assert "['g', 'h']" in _all_problems(package / "__init__.py", "pkg")[0]
