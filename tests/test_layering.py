"""Imports flow one way: physics -> swarm -> env -> agents -> training, with the edges on top,
and no two modules import each other (directly or around a longer circle).

Every ``.py`` file under ``swarm_jax/`` is parsed (``ast``) and every import in it is collected:
``import a.b``, ``from a import b``, relative imports (``from ..agents import x``), imports
inside functions and ``if TYPE_CHECKING:`` blocks, ``importlib.import_module`` calls with a
literal name, and attribute use of an imported package (``import swarm_jax`` then
``swarm_jax.TiO2GrowthEnv``).

A name imported from a package or module that only re-exports it is followed to the module that
defines it: ``from swarm_jax import TiO2GrowthEnv`` is an import of ``swarm_jax.env.tio2_env``
(the root re-exports it lazily through ``__getattr__``), ``from swarm_jax.physics import run`` one
of ``swarm_jax.physics.engine``. A lazy export that cannot be followed statically is followed by
importing the package and asking the object for its ``__module__``; a name that cannot be
followed either way fails the test. So a lower layer cannot reach a higher one through the root.

The rules:

- core layers, low to high: ``physics < swarm < env < agents < training``. A module may import
  its own layer and lower ones, never a higher one;
- edges (``gym``, ``simulate``, ``production``, ``analyze``, ``analysis``, ``bench``,
  ``parity``, ``trained_policy``) may import anything; no core module may import an edge;
- utilities (``distributed``, ``outdir``, ``compile_cache``, ``cli``, ``validation``) may be
  imported from anywhere and import no core layer and no edge themselves (only other utilities);
- the package root ``swarm_jax`` may import anything, and importing the bare root (or a name it
  defines itself, such as ``__version__``) is allowed everywhere: Python executes it for any
  submodule import anyway. For the same reason edges into the root are left out of the cycle
  search;
- no import cycles between modules (function-local and ``TYPE_CHECKING`` imports count);
- nothing in the core imports ``gymnasium``, ``stable_baselines3`` or ``torch``.

Known back-edges are listed in ``KNOWN_BACK_EDGES`` with the reason they still exist; the test
fails on any other violation and on any listed edge that no longer exists (remove it from the
list when it is fixed).
"""

from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

PACKAGE = "swarm_jax"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

CORE_LAYERS = ("physics", "swarm", "env", "agents", "training")  # low -> high
EDGES = ("gym", "simulate", "production", "analyze", "analysis", "bench", "parity",
         "trained_policy")
UTILITIES = ("distributed", "outdir", "compile_cache", "cli", "validation")
FORBIDDEN_IN_CORE = ("gymnasium", "stable_baselines3", "torch")

# (importing module, imported module or third-party package): why it is still there.
KNOWN_BACK_EDGES: dict[tuple[str, str], str] = {}


# --------------------------------------------------------------------------- the package model


def _internal(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


@dataclass
class Package:
    """The sources of a package's modules, parsed once: ``{dotted name: (source, is_package)}``.

    ``runtime_module_of(package, name)`` -> the defining module of a lazily exported name, or
    None; used only where the static reading cannot follow a ``__getattr__`` export."""

    sources: dict[str, tuple[str, bool]]
    runtime_module_of: Optional[Callable[[str, str], Optional[str]]] = None
    _trees: dict = field(default_factory=dict, repr=False)
    _bindings: dict = field(default_factory=dict, repr=False)

    def __contains__(self, module: str) -> bool:
        return module in self.sources

    def tree(self, module: str) -> ast.Module:
        if module not in self._trees:
            self._trees[module] = ast.parse(self.sources[module][0])
        return self._trees[module]

    def is_package(self, module: str) -> bool:
        return self.sources[module][1]

    def bindings(self, module: str) -> dict[str, tuple[str, str]]:
        """Names ``module`` binds by importing them: ``{local name: (source module, name there)}``
        (module-level and lazy ``__getattr__`` imports alike)."""
        if module not in self._bindings:
            self._bindings[module] = _bindings_of(module, self.is_package(module), self.tree(module),
                                                  self.sources)
        return self._bindings[module]

    def has_lazy_exports(self, module: str) -> bool:
        return any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__"
                   for n in self.tree(module).body)

    def defining_module(self, module: str, name: str, _seen=None) -> Optional[str]:
        """The module that defines ``module.name`` (a submodule, or the module a re-export comes
        from, followed to its end); None when a lazy export cannot be followed."""
        if f"{module}.{name}" in self:
            return f"{module}.{name}"
        if module not in self:
            return module
        seen = _seen or set()
        if (module, name) in seen:
            return module
        seen.add((module, name))
        bound = self.bindings(module).get(name)
        if bound is not None:
            source, original = bound
            if not _internal(source):
                return module
            return self.defining_module(source, original, seen)
        if self.has_lazy_exports(module) and not _defines(self.tree(module), name):
            return self.runtime_module_of(module, name) if self.runtime_module_of else None
        return module


def _defines(tree: ast.Module, name: str) -> bool:
    """Whether the module's top level assigns or defines ``name``."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        for target in targets:
            if any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(target)):
                return True
    return False


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute base module of a ``from ... import`` statement."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _bindings_of(module: str, is_package: bool, tree: ast.Module,
                 known) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, is_package, node)
            for alias in node.names:
                if alias.name != "*":
                    out.setdefault(alias.asname or alias.name, (base, alias.name))
    # The lazy pattern `if name in ("A", "B"): from pkg import mod; return getattr(mod, name)`.
    for fn in tree.body:
        if not (isinstance(fn, ast.FunctionDef) and fn.name == "__getattr__"):
            continue
        for branch in ast.walk(fn):
            if not (isinstance(branch, ast.If) and isinstance(branch.test, ast.Compare)
                    and isinstance(branch.test.ops[0], ast.In)
                    and isinstance(branch.test.comparators[0], (ast.Tuple, ast.List, ast.Set))):
                continue
            names = [e.value for e in branch.test.comparators[0].elts
                     if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            for imp in (n for stmt in branch.body for n in ast.walk(stmt)):
                if isinstance(imp, ast.ImportFrom):
                    base = _resolve_from(module, is_package, imp)
                    for alias in imp.names:
                        for name in names:
                            out[name] = (f"{base}.{alias.name}", name)
        # The lazy table `_EXPORTS = {"Name": "submodule", ...}` beside a __getattr__ (gym's).
        here = module if is_package else module.rpartition(".")[0]
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                for k, v in zip(node.value.keys, node.value.values):
                    if (isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
                            and isinstance(v.value, str) and f"{here}.{v.value}" in known):
                        out.setdefault(k.value, (f"{here}.{v.value}", k.value))
    return out


def module_name(path: Path) -> str:
    """Dotted module name of a file under the package (``swarm_jax/a/__init__.py`` -> ``swarm_jax.a``)."""
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_module_of(package: str, name: str) -> Optional[str]:
    try:
        obj = getattr(importlib.import_module(package), name, None)
    except ImportError:  # an optional extra (gym) is not installed
        return None
    defined_in = getattr(obj, "__module__", None) or getattr(obj, "__name__", None)
    return defined_in if isinstance(defined_in, str) and _internal(defined_in) else None


def real_package() -> Package:
    return Package({module_name(p): (p.read_text(), p.name == "__init__.py")
                    for p in sorted(PACKAGE_DIR.rglob("*.py"))}, _runtime_module_of)


# --------------------------------------------------------------------------- collecting imports


UNRESOLVED = "<unresolved>"


def imports_of(module: str, pkg: Package) -> set[str]:
    """Absolute names of everything ``module`` imports: package names followed to their defining
    module (``name<unresolved>`` where that is impossible), third-party imports as their top-level
    package."""
    tree, is_package = pkg.tree(module), pkg.is_package(module)
    found: set[str] = set()
    aliases: dict[str, str] = {}  # local name -> package module it is bound to

    def add_name(base: str, attr: str):
        target = pkg.defining_module(base, attr)
        found.add(target if target is not None else f"{base}.{attr}{UNRESOLVED}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _internal(alias.name):
                    found.add(alias.name)
                    aliases[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0])
                else:
                    found.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(module, is_package, node)
            if not _internal(base):
                found.add(base.split(".")[0])
                continue
            for alias in node.names:
                if alias.name == "*":
                    found.add(base)
                    continue
                add_name(base, alias.name)
                if f"{base}.{alias.name}" in pkg:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "import_module"))):
            name = node.args[0].value
            found.add(name if _internal(name) else name.split(".")[0])
    # Attribute use of a bound package: `swarm_jax.TiO2GrowthEnv`, `getattr(swarm_jax, "X")`.
    inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        chain = None if id(node) in inner else _attribute_chain(node)
        if chain and chain[0] in aliases:
            current = aliases[chain[0]]
            for attr in chain[1:]:
                if f"{current}.{attr}" in pkg:
                    current = f"{current}.{attr}"
                    continue
                add_name(current, attr)
                break
            else:
                found.add(current)
    found.discard(module)
    return found


def _attribute_chain(node) -> Optional[list[str]]:
    """``a.b.c`` -> ["a", "b", "c"]; ``getattr(a, "b")`` -> ["a", "b"]; else None."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
            and len(node.args) >= 2 and isinstance(node.args[0], ast.Name) \
            and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
        return [node.args[0].id, node.args[1].value]
    if not isinstance(node, ast.Attribute):
        return None
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id] + parts[::-1]


def import_graph(pkg: Package) -> dict[str, set[str]]:
    """{module: the package modules it imports} (third-party packages left out)."""
    return {m: {i for i in imports_of(m, pkg) if _internal(i)} for m in pkg.sources}


# --------------------------------------------------------------------------- the rules


def group_of(module: str) -> str:
    """``root``, a core layer name, ``edge`` or ``utility``."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    top = parts[1]
    if top in CORE_LAYERS:
        return top
    if top in EDGES:
        return "edge"
    if top in UTILITIES:
        return "utility"
    raise AssertionError(f"{module} belongs to no layer: add it to CORE_LAYERS, EDGES or UTILITIES")


def violation(importer: str, imported: str) -> Optional[str]:
    """Why ``importer`` must not import ``imported``, or None if it may."""
    src = group_of(importer)
    if not _internal(imported):
        if src in CORE_LAYERS and imported in FORBIDDEN_IN_CORE:
            return f"core layer {src} imports {imported}"
        return None
    if src in ("root", "edge") or imported == PACKAGE:
        return None
    if imported.endswith(UNRESOLVED):
        return "imports a lazy re-export that cannot be followed to its defining module"
    dst = group_of(imported)
    if src == "utility":
        return None if dst == "utility" else f"utility imports {dst}"
    if dst == "utility":
        return None
    if dst == "edge":
        return f"core layer {src} imports an edge"
    if CORE_LAYERS.index(dst) > CORE_LAYERS.index(src):
        return f"{src} imports the higher layer {dst}"
    return None


def all_violations(pkg: Package) -> dict[tuple[str, str], str]:
    out = {}
    for name in pkg.sources:
        for imported in sorted(imports_of(name, pkg)):
            why = violation(name, imported)
            if why:
                out[(name, imported)] = why
    return out


def import_cycles(pkg: Package) -> list[list[str]]:
    """Every circle of imports, one per strongly connected component (Tarjan), as a path
    ``[a, b, ..., a]``. Edges into the bare root are left out (see the module docstring)."""
    graph = {m: sorted(t for t in targets if t != PACKAGE and t in pkg)
             for m, targets in import_graph(pkg).items()}
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):  # recursive Tarjan; the package has well under 1000 modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_circle_in(graph, set(c)) for c in components]


def _circle_in(graph, component: set[str]) -> list[str]:
    """One concrete circle through the smallest module of a strongly connected component."""
    start = min(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in graph[path[-1]]:
            if w == start:
                return path + [start]
            if w in component and w not in seen:
                seen.add(w)
                paths.append(path + [w])
    raise AssertionError("a strongly connected component without a circle")


def _describe(violations) -> str:
    return "\n".join(f"  {a} -> {b}: {why}" for (a, b), why in sorted(violations.items()))


# --------------------------------------------------------------------------- tests on the package


@pytest.fixture(scope="module")
def package():
    return real_package()


def test_no_new_back_edges(package):
    assert len(package.sources) > 20 and "swarm_jax.physics.engine" in package
    found = all_violations(package)
    new = {edge: why for edge, why in found.items() if edge not in KNOWN_BACK_EDGES}
    assert not new, "imports against the layering (physics < swarm < env < agents < training; " \
                    "edges on top):\n" + _describe(new)


def test_known_back_edges_still_exist(package):
    found = all_violations(package)
    gone = [edge for edge in KNOWN_BACK_EDGES if edge not in found]
    assert not gone, f"fixed back-edges, remove them from KNOWN_BACK_EDGES: {gone}"
    for edge, reason in KNOWN_BACK_EDGES.items():
        assert reason.endswith("to be removed: issue 13"), edge


def test_no_import_cycles(package):
    cycles = import_cycles(package)
    assert not cycles, "import cycles (move the shared piece down to where it belongs):\n" + \
        "\n".join("  " + " -> ".join(c) for c in cycles)


def test_every_module_has_a_layer(package):
    for name in package.sources:
        group_of(name)


@pytest.mark.slow  # imports every package, the gym adapters (torch) included
def test_static_reading_of_every_export_agrees_with_python(package):
    """Every name a package lists in ``__all__`` is followed statically to the module Python says
    defines it (classes and functions know their ``__module__``) — so the static reading of the
    re-exports, lazy ones included, is the real one."""
    checked = 0
    for pkg_name in (m for m in package.sources if package.is_package(m)):
        module = importlib.import_module(pkg_name)
        for name in getattr(module, "__all__", ()):
            try:
                obj = getattr(module, name)
            except ImportError:  # an optional extra (gym) is not installed
                continue
            defined_in = getattr(obj, "__module__", None)
            if not (isinstance(defined_in, str) and _internal(defined_in)) or defined_in not in package:
                continue
            static = Package(package.sources).defining_module(pkg_name, name)  # no runtime help
            if static is None:  # a lazy export the static reading cannot follow: runtime does
                assert package.defining_module(pkg_name, name) == defined_in, (pkg_name, name)
                continue
            assert static == defined_in, f"{pkg_name}.{name}: static {static}, Python {defined_in}"
            checked += 1
    assert checked > 50


# --------------------------------------------------------------------------- the checker itself

# The checker on synthetic modules added to the real package: it must see each kind of import.
CHECKER_CASES = [
    ("swarm_jax.physics.fake", False, "def f():\n    from ..agents import ppo\n",
     {("swarm_jax.physics.fake", "swarm_jax.agents.ppo")}),
    ("swarm_jax.swarm.fake", False, "from .policy import x\nfrom . import weights\n", set()),
    ("swarm_jax.env.fake", False, "import swarm_jax.training.trainer as t\n",
     {("swarm_jax.env.fake", "swarm_jax.training.trainer")}),
    ("swarm_jax.agents.fake", False, "from swarm_jax import simulate, distributed\n",
     {("swarm_jax.agents.fake", "swarm_jax.simulate")}),
    ("swarm_jax.training.fake", False, "if TYPE_CHECKING:\n    import torch.nn\n",
     {("swarm_jax.training.fake", "torch")}),
    ("swarm_jax.env.fake", False, "import importlib\nm = importlib.import_module('swarm_jax.agents.ppo')\n",
     {("swarm_jax.env.fake", "swarm_jax.agents.ppo")}),
    ("swarm_jax.distributed", False, "from swarm_jax.physics import engine\n",
     {("swarm_jax.distributed", "swarm_jax.physics.engine")}),
    ("swarm_jax.gym.fake", False, "import gymnasium\nfrom swarm_jax.training import trainer\n", set()),
    ("swarm_jax.physics.fake", False, "import swarm_jax\nfrom .params import PhysicsParams\n", set()),
    ("swarm_jax.physics.fake", False, "import swarm_jax\nv = swarm_jax.__version__\n", set()),
    # Root re-exports are followed to the defining module: the lazy env export ...
    ("swarm_jax.physics.fake", False, "from swarm_jax import TiO2GrowthEnv\n",
     {("swarm_jax.physics.fake", "swarm_jax.env.tio2_env")}),
    ("swarm_jax.swarm.fake", False, "def f():\n    from .. import compute_reward as r\n",
     {("swarm_jax.swarm.fake", "swarm_jax.env.reward")}),
    # ... also when reached as an attribute of the root or through getattr ...
    ("swarm_jax.physics.fake", False, "import swarm_jax as sj\nE = sj.EnvParams\n",
     {("swarm_jax.physics.fake", "swarm_jax.env.tio2_env")}),
    ("swarm_jax.physics.fake", False, "import swarm_jax\nE = getattr(swarm_jax, 'RewardConfig')\n",
     {("swarm_jax.physics.fake", "swarm_jax.env.reward")}),
    ("swarm_jax.swarm.fake", False, "import swarm_jax.physics\nx = swarm_jax.agents.ppo.make\n",
     {("swarm_jax.swarm.fake", "swarm_jax.agents.ppo")}),
    # ... and the eager re-export of a lower layer stays allowed.
    ("swarm_jax.physics.fake", False, "from swarm_jax import LatticeState\n", set()),
]


@pytest.mark.parametrize("module, is_package, source, expected", CHECKER_CASES)
def test_checker_sees_every_kind_of_import(package, module, is_package, source, expected):
    planted = Package({**package.sources, module: (source, is_package)}, package.runtime_module_of)
    found = {(module, imported) for imported in imports_of(module, planted)
             if violation(module, imported)}
    assert found == expected


# A whole fake package: its root re-exports a higher layer lazily (the real root's pattern), a
# lower layer reaches it through the root, and two modules import each other through a local
# import and a re-export.
FAKE_PACKAGE = {
    "swarm_jax": ('from swarm_jax.physics import A\n'
                  'def __getattr__(name):\n'
                  '    if name in ("Env",):\n'
                  '        from swarm_jax.env import world\n'
                  '        return getattr(world, name)\n', True),
    "swarm_jax.physics": ("from swarm_jax.physics.one import A\n", True),
    "swarm_jax.physics.one": ("from swarm_jax.physics.two import B\nclass A: pass\n", False),
    "swarm_jax.physics.two": ("def f():\n    from swarm_jax.physics import A\nclass B: pass\n", False),
    "swarm_jax.physics.three": ("import swarm_jax\ndef f():\n    return swarm_jax.Env\n", False),
    "swarm_jax.env": ("", True),
    "swarm_jax.env.world": ("from swarm_jax import A\nclass Env: pass\n", False),
    "swarm_jax.env.hidden": ("def __getattr__(name):\n    return 1\n", False),
    "swarm_jax.physics.four": ("from swarm_jax.env.hidden import X\n", False),
}


def test_checker_fails_on_a_planted_root_reexport_and_a_planted_cycle():
    fake = Package(FAKE_PACKAGE)
    assert all_violations(fake) == {
        ("swarm_jax.physics.three", "swarm_jax.env.world"): "physics imports the higher layer env",
        ("swarm_jax.physics.four", "swarm_jax.env.hidden.X" + UNRESOLVED):
            "imports a lazy re-export that cannot be followed to its defining module",
    }
    assert import_cycles(fake) == [["swarm_jax.physics.one", "swarm_jax.physics.two",
                                    "swarm_jax.physics.one"]]


def test_cycle_search_reports_every_circle_and_ignores_the_bare_root():
    sources = {
        "swarm_jax": ("from swarm_jax.physics.a import X\n", True),
        "swarm_jax.physics": ("", True),
        "swarm_jax.physics.a": ("import swarm_jax\nfrom .b import Y\nX = 1\n", False),
        "swarm_jax.physics.b": ("from .c import Z\nY = 1\n", False),
        "swarm_jax.physics.c": ("if TYPE_CHECKING:\n    from .a import X\nZ = 1\n", False),
        "swarm_jax.production": ("", True),
        "swarm_jax.production.run": ("from .writers import w\nclass R: pass\n", False),
        "swarm_jax.production.writers": ("def w():\n    from .run import R\n", False),
    }
    assert sorted(import_cycles(Package(sources))) == [
        ["swarm_jax.physics.a", "swarm_jax.physics.b", "swarm_jax.physics.c", "swarm_jax.physics.a"],
        ["swarm_jax.production.run", "swarm_jax.production.writers", "swarm_jax.production.run"],
    ]


@pytest.mark.slow  # imports the gym adapters (torch)
def test_a_lazy_export_beyond_the_static_reading_is_followed_at_run_time(package):
    """A ``__getattr__`` export the static reading cannot follow: Python's answer is used."""
    pytest.importorskip("gymnasium")
    sources = {**package.sources,
               "swarm_jax.gym": ("import importlib\ndef __getattr__(name):\n"
                                 "    return getattr(importlib.import_module('swarm_jax.gym.'\n"
                                 "                   + {'TiO2GrowthGymEnv': 'adapter'}[name]), name)\n",
                                 True),
               "swarm_jax.env.fake": ("from swarm_jax.gym import TiO2GrowthGymEnv\n", False)}
    assert Package(sources).defining_module("swarm_jax.gym", "TiO2GrowthGymEnv") is None
    planted = Package(sources, package.runtime_module_of)
    assert imports_of("swarm_jax.env.fake", planted) == {"swarm_jax.gym.adapter"}
