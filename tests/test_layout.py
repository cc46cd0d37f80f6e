"""The layout keeps its promises: the arrows between the plugin's modules run one way.

Read from the source with ``ast`` (nothing is imported), counting every import a
module can make: at module level, inside functions, under ``if TYPE_CHECKING:``,
and ``importlib.import_module("...")`` with a literal name. Then:

- no production module (anything under ``phonehome_plugin/`` outside ``testing/``)
  imports from ``phonehome_plugin.testing``, except the ``phonehome demo`` command,
  which imports ``testing.demo`` inside its own function;
- there is no import cycle among the plugin's modules;
- each folder imports only what the ``May import:`` line of its ``__init__``
  docstring allows (the engine at the top: the root ``__init__``), those lines
  themselves describe one-way layers, and the ``__init__`` files import nothing;
- every ``setattr(module, "NAME", ...)`` or ``module.NAME = ...`` in tests/ and
  bench/ aimed at a module of the plugin names a name that module reads: a patch
  of a name nobody reads there would silently test nothing.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "phonehome_plugin"
TESTING = f"{PACKAGE}.testing"
ENGINE = "engine"
DEMO_COMMAND = (f"{PACKAGE}.cli.commands", "demo", f"{PACKAGE}.testing.demo")
"""The one production import of testing/: (module, function it sits in, target)."""
ALLOWED_LINE = re.compile(r"[Mm]ay import:\s*([^.]*)\.")


@dataclass(frozen=True)
class Import:
    """One import a module makes, and where in the module it sits."""

    source: str
    target: str
    named: str  # the module the statement names (target may be a package on its way)
    line: int
    functions: tuple[str, ...]  # the enclosing functions, outermost first

    def __str__(self) -> str:
        where = f" (in {'.'.join(self.functions)})" if self.functions else ""
        return f"{self.source}:{self.line} imports {self.target}{where}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every module and package of the plugin, by dotted name."""
    return {module_name(path): path for path in sorted((ROOT / PACKAGE).rglob("*.py"))}


@cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text("utf-8"), filename=str(path))


def _targets(name: str, imported: list[str]) -> Iterator[str]:
    """The plugin's modules an import of ``imported`` names from ``name`` runs: each
    package on the way (its ``__init__`` runs first), then the module itself, or the
    submodule when an imported name is one."""
    parts = name.split(".")
    for size in range(1, len(parts) + 1):
        prefix = ".".join(parts[:size])
        if prefix in modules():
            yield prefix
    for item in imported:
        if f"{name}.{item}" in modules():
            yield f"{name}.{item}"


def _resolve(source: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = source if modules()[source].name == "__init__.py" else source.rpartition(".")[0]
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def _imports_of(source: str) -> Iterator[Import]:
    def visit(node: ast.AST, functions: tuple[str, ...]) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            inner = functions
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = (*functions, child.name)
            found: list[tuple[str, list[str]]] = []
            if isinstance(child, ast.Import):
                found = [(alias.name, []) for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                found = [(_resolve(source, child), [alias.name for alias in child.names])]
            elif (
                isinstance(child, ast.Call)
                and isinstance(child.func, ast.Attribute | ast.Name)
                and (getattr(child.func, "attr", None) or getattr(child.func, "id", None))
                in ("import_module", "__import__")
                and child.args
                and isinstance(child.args[0], ast.Constant)
                and isinstance(child.args[0].value, str)
            ):
                found = [(child.args[0].value, [])]
            # Only statements (the imports) and expressions (the call) are found.
            line = child.lineno if isinstance(child, ast.stmt | ast.expr) else 0
            for name, imported in found:
                if name == PACKAGE or name.startswith(PACKAGE + "."):
                    for target in _targets(name, imported):
                        yield Import(source, target, name, line, functions)
            yield from visit(child, inner)

    yield from visit(tree(modules()[source]), ())


@cache
def imports() -> tuple[Import, ...]:
    return tuple(i for source in modules() for i in _imports_of(source) if i.target != source)


def unit(module: str) -> str:
    """The folder a module belongs to (``state``, ``testing``...), or the engine: the
    modules at the top. ``__main__`` is the command's (``python -m phonehome_plugin``
    is ``phonehome``), so it counts as ``cli``; the root package is its own."""
    if module == PACKAGE:
        return PACKAGE
    below = module[len(PACKAGE) + 1 :]
    if below == "__main__":
        return "cli"
    head = below.split(".")[0]
    return head if f"{PACKAGE}.{head}" in _packages() else ENGINE


@cache
def _packages() -> frozenset[str]:
    return frozenset(
        name
        for name, path in modules().items()
        if path.name == "__init__.py" and name.count(".") == 1
    )


def _engine_modules() -> set[str]:
    return {m.rsplit(".", 1)[1] for m in modules() if unit(m) == ENGINE}


@cache
def allowed() -> dict[str, frozenset[str]]:
    """What each folder (and the engine) may import, from its ``__init__`` docstring:
    folder names, or names of the engine's modules (``plugin``)."""
    known = {p.rsplit(".", 1)[1] for p in _packages()} | _engine_modules()
    found: dict[str, frozenset[str]] = {}
    for owner, path in [
        (ENGINE, modules()[PACKAGE]),
        *((p.rsplit(".", 1)[1], modules()[p]) for p in _packages()),
    ]:
        doc = ast.get_docstring(tree(path)) or ""
        match = ALLOWED_LINE.search(doc)
        assert match, (
            f"{path.relative_to(ROOT)}: the docstring says nothing like 'May import: ...'"
        )
        names = {n.strip() for n in re.split(r",|\band\b", " ".join(match[1].split()))}
        names = {n for n in names if n and n != "nothing"}
        assert names <= known, (
            f"{path.relative_to(ROOT)}: no such folder or module {names - known}"
        )
        found[owner] = frozenset(names)
    return found


def _is_demo_command(i: Import) -> bool:
    command, function, demo = DEMO_COMMAND
    return (i.source, i.functions[-1:], i.named) == (command, (function,), demo)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                connect(nxt)
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

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


# The tests --------------------------------------------------------------------------------


def test_the_reader_sees_every_kind_of_import() -> None:
    """The checks below are only as good as the reader: it finds an import inside a
    function, one under TYPE_CHECKING and an ``import_module`` call."""
    found = {(i.source, i.target) for i in imports()}
    assert (f"{PACKAGE}.plugin", f"{PACKAGE}.runtime") in found  # inside _start
    assert (f"{PACKAGE}.state.forksafe", f"{PACKAGE}.state.store") in found  # TYPE_CHECKING
    assert (f"{PACKAGE}.worker", f"{PACKAGE}.state.postgres") in found  # import_module
    assert (f"{PACKAGE}.state.sqlite", f"{PACKAGE}.state") in found  # the package runs first


def test_no_production_module_imports_testing() -> None:
    wrong = [
        str(i)
        for i in imports()
        if unit(i.target) == "testing" and unit(i.source) != "testing" and not _is_demo_command(i)
    ]
    assert wrong == [], "production code must not import phonehome_plugin.testing:\n" + "\n".join(
        wrong
    )
    assert any(_is_demo_command(i) for i in imports()), "the demo command's import moved: say so"


def _one_cycle(component: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest way round ``component`` (a strongly connected set), from its first
    member back to it: ``[a, b, c, a]``."""
    start, inside = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(edges.get(node, set()) & inside):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"{component} is not strongly connected")


def test_there_is_no_import_cycle() -> None:
    edges: dict[str, set[str]] = {}
    for i in imports():
        edges.setdefault(i.source, set()).add(i.target)
    said = []
    for component in _cycles(edges):
        way = _one_cycle(component, edges)
        steps = [
            next(str(i) for i in imports() if (i.source, i.target) == (a, b))
            for a, b in itertools.pairwise(way)
        ]
        said.append(" -> ".join(way) + "".join(f"\n  {step}" for step in steps))
    assert said == [], "import cycles:\n" + "\n".join(said)


def test_each_folder_imports_only_what_its_init_allows() -> None:
    rules = allowed()
    wrong = []
    for i in imports():
        source, target = unit(i.source), unit(i.target)
        if target in (source, PACKAGE) or _is_demo_command(i):
            continue
        may = rules[ENGINE] | _engine_modules() if source == ENGINE else rules[source]
        name = i.target.rsplit(".", 1)[1] if target == ENGINE else target
        if name not in may:
            wrong.append(f"{i}: {source} may import only {', '.join(sorted(may)) or 'nothing'}")
    assert wrong == [], "\n".join(wrong)


def test_the_allowed_imports_are_layers() -> None:
    """Folders allowed to import each other, directly or round about, would let a cycle
    in between modules that no module-level check would call one."""
    edges = {
        owner: {ENGINE if name in _engine_modules() else name for name in names}
        for owner, names in allowed().items()
    }
    assert _cycles(edges) == []


def test_the_init_files_import_nothing() -> None:
    """Importing a module runs its packages' ``__init__``: they stay free, so that the
    host pays only for the modules it uses, and no package can close a cycle."""
    for name, path in modules().items():
        if path.name == "__init__.py":
            statements = [
                n for n in ast.walk(tree(path)) if isinstance(n, ast.Import | ast.ImportFrom)
            ]
            assert statements == [], f"{name} imports something"


def _module_locals(module: ast.Module) -> dict[str, str]:
    """Names bound to a module of the plugin by ``from X import module [as name]``."""
    found = {}
    for node in ast.walk(module):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules():
                    found[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return found


def _patches(module: ast.Module) -> Iterator[tuple[int, str, str]]:
    """(line, local name of a plugin module, NAME) for each ``x.setattr(local, "NAME", ...)``
    and each ``local.NAME = ...``."""
    bound = _module_locals(module)
    for node in ast.walk(module):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "setattr"
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in bound
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            yield node.lineno, bound[node.args[0].id], node.args[1].value
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id in bound
                ):
                    yield node.lineno, bound[target.value.id], target.attr


@cache
def _attribute_reads() -> frozenset[tuple[str, str]]:
    """(module, NAME) for every ``module.NAME`` the plugin reads, ``module`` being bound
    by ``from X import module``."""
    reads = set()
    for path in modules().values():
        bound = _module_locals(tree(path))
        for n in ast.walk(tree(path)):
            if (
                isinstance(n, ast.Attribute)
                and isinstance(n.ctx, ast.Load)
                and isinstance(n.value, ast.Name)
                and n.value.id in bound
            ):
                reads.add((bound[n.value.id], n.attr))
    return frozenset(reads)


def _read_by_the_plugin(module: str, name: str) -> bool:
    """True when the plugin reads ``name`` through ``module`` at run time: as a global
    of ``module`` itself, or as ``module.name`` anywhere in the plugin."""
    return (module, name) in _attribute_reads() or any(
        isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)
        for n in ast.walk(tree(modules()[module]))
    )


def test_every_patch_of_a_plugin_module_aims_where_the_name_is_read() -> None:
    wrong, seen = [], 0
    for path in sorted([*(ROOT / "tests").glob("*.py"), *(ROOT / "bench").glob("*.py")]):
        for line, module, name in _patches(tree(path)):
            seen += 1
            if not _read_by_the_plugin(module, name):
                where = path.relative_to(ROOT)
                wrong.append(f"{where}:{line} patches {module}.{name}, which nothing reads there")
    assert seen, "no patch found: the reader of patches is broken"
    assert wrong == [], "\n".join(wrong)
