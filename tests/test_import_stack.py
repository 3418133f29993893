"""The package's import graph is a one-way stack, and private names stay in their module.

Every module of `jax_gna` is read with `ast` (imports at module level and inside functions
alike, so a cycle cannot hide behind a function-level import). The test fails on:

- an import cycle. Importing ``a.b.c`` runs the package ``a.b`` first, so an import of a
  submodule also depends on every package above it that does not already contain the
  importer;
- a private name (``_name``, not a module) of one module used by another: imported
  (``from jax_gna.x import _name``) or read as an attribute (``x._name`` after ``from jax_gna
  import x``). Modules of one subpackage (``jax_gna/parallel/``) may share private names;
  the top-level modules of `jax_gna` may not, nor may the scripts in ``benchmarks/`` and
  ``examples/``.
"""

from __future__ import annotations

import ast
import pathlib

import jax_gna

PACKAGE = pathlib.Path(jax_gna.__file__).parent
ROOT = "jax_gna"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
PACKAGES = {name for name, p in MODULES.items() if p.name == "__init__.py"}
# Compiled modules (known by their stubs): importable, and nothing to scan.
COMPILED = {_module_name(p) for p in PACKAGE.rglob("*.pyi")}
IMPORTABLE = set(MODULES) | COMPILED


def _package_of(module: str) -> str:
    """The package a module's relative imports and private names belong to."""
    return module if module in PACKAGES else module.rpartition(".")[0]


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class _Imports(ast.NodeVisitor):
    """Imports of `jax_gna` modules in one module: ``(target module, name or None, line)``,
    plus the local names bound to `jax_gna` modules (to find ``alias._private``)."""

    def __init__(self, module: str):
        self.module = module
        self.imports: list[tuple[str, str | None, int]] = []
        self.aliases: dict[str, str] = {}

    def _resolve(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = _package_of(self.module).split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == ROOT:
                self.imports.append((alias.name, None, node.lineno))
                if alias.asname:
                    self.aliases[alias.asname] = alias.name

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = self._resolve(node)
        if source.split(".")[0] != ROOT:
            return
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in IMPORTABLE:
                self.imports.append((submodule, None, node.lineno))
                self.aliases[alias.asname or alias.name] = submodule
            else:
                self.imports.append((source, alias.name, node.lineno))


def _scan(module: str, path: pathlib.Path) -> _Imports:
    tree = ast.parse(path.read_text(), str(path))
    found = _Imports(module)
    found.visit(tree)
    found.tree = tree
    return found


SCANS = {m: _scan(m, p) for m, p in MODULES.items()}
# The repository's scripts (absent where the package is tested installed).
SCRIPTS = {
    f"{folder}.{path.stem}": _scan(f"{folder}.{path.stem}", path)
    for folder in ("benchmarks", "examples")
    for path in sorted((PACKAGE.parent / folder).glob("*.py"))
}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, scan in SCANS.items():
        inside = set(_ancestors(module)) | ({module} if module in PACKAGES else set())
        for target, _, _ in scan.imports:
            if target not in MODULES:
                continue
            for dep in [*_ancestors(target), target]:
                if dep != module and dep not in inside:
                    graph[module].add(dep)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    cycles = _cycles(_graph())
    assert not cycles, f"import cycles (each a set of modules that import each other): {cycles}"


def _shares_private(user: str, owner: str) -> bool:
    """Whether `user` may use `owner`'s private names: the same module, or two modules of one
    subpackage below `jax_gna`."""
    if user == owner:
        return True
    package = _package_of(owner)
    return package != ROOT and _package_of(user) == package


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_uses(scans: dict[str, _Imports]) -> list[str]:
    uses = []
    for module, scan in scans.items():
        for target, name, line in scan.imports:
            if name and _private(name) and not _shares_private(module, target):
                uses.append(f"{module}:{line} imports {target}.{name}")
        for node in ast.walk(scan.tree):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            owner = _attribute_owner(node.value, scan.aliases)
            if owner is None or f"{owner}.{node.attr}" in IMPORTABLE:
                continue
            if not _shares_private(module, owner):
                uses.append(f"{module}:{node.lineno} uses {owner}.{node.attr}")
    return uses


def _attribute_owner(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """The `jax_gna` module an expression like ``x`` or ``jax_gna.x`` names, if any."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id, ROOT if node.id == ROOT else None)
    if isinstance(node, ast.Attribute):
        base = _attribute_owner(node.value, aliases)
        if base is not None and f"{base}.{node.attr}" in MODULES:
            return f"{base}.{node.attr}"
    return None


def test_no_private_name_crosses_a_module_boundary():
    uses = _private_uses(SCANS)
    assert not uses, "private names used outside their module:\n" + "\n".join(uses)


def test_scripts_use_no_private_name_of_the_package():
    uses = _private_uses(SCRIPTS)
    assert not uses, "private names of jax_gna in scripts:\n" + "\n".join(uses)
