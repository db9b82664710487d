"""Imports flow one way: physics -> swarm -> env -> agents -> training, with the edges on top.

Every ``.py`` file under ``swarm_jax/`` is parsed (``ast``, nothing is imported) and every import
in it is collected: ``import a.b``, ``from a import b``, relative imports (``from ..agents import
x``), imports inside functions and ``if TYPE_CHECKING:`` blocks, and ``importlib.import_module``
calls with a literal name. The rules:

- core layers, low to high: ``physics < swarm < env < agents < training``. A module may import
  its own layer and lower ones, never a higher one;
- edges (``gym``, ``simulate``, ``production``, ``analyze``, ``analysis``, ``bench``,
  ``parity``, ``trained_policy``) may import
  anything; no core module may import an edge;
- utilities (``distributed``, ``outdir``, ``compile_cache``, ``cli``, ``validation``) may be imported from anywhere and import no core layer
  and no edge themselves (only other utilities);
- the package root ``swarm_jax`` (it switches on 64-bit mode and re-exports a few names) may
  import anything, and importing the bare root is allowed everywhere (Python executes it for any
  submodule import anyway);
- nothing in the core imports ``gymnasium``, ``stable_baselines3`` or ``torch``.

Known back-edges are listed in ``KNOWN_BACK_EDGES`` with the reason they still exist; the test
fails on any other violation and on any listed edge that no longer exists (remove it from the
list when it is fixed).
"""

from __future__ import annotations

import ast
from pathlib import Path

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


# --------------------------------------------------------------------------- collecting imports


def module_name(path: Path) -> str:
    """Dotted module name of a file under the package (``swarm_jax/a/__init__.py`` -> ``swarm_jax.a``)."""
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """{dotted name: path} of every module of the package."""
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _resolve_from(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute base module of a ``from ... import`` statement."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, source: str, is_package: bool, known_modules) -> set[str]:
    """Absolute names of everything ``source`` imports (package modules resolved to the module;
    third-party imports as their top-level package)."""
    found: set[str] = set()

    def add(name: str, attrs=()):
        if name == PACKAGE or name.startswith(PACKAGE + "."):
            hits = [f"{name}.{a}" for a in attrs if f"{name}.{a}" in known_modules]
            # `from pkg import name` imports pkg itself too, unless every name is a submodule.
            if not hits or len(hits) < len(attrs):
                found.add(name)
            found.update(hits)
        elif name:
            found.add(name.split(".")[0])

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            add(_resolve_from(module, is_package, node), [a.name for a in node.names if a.name != "*"])
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id == "import_module"))):
            add(node.args[0].value)
    found.discard(module)
    return found


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


def violation(importer: str, imported: str) -> str | None:
    """Why ``importer`` must not import ``imported``, or None if it may."""
    src = group_of(importer)
    if not (imported == PACKAGE or imported.startswith(PACKAGE + ".")):
        if src in CORE_LAYERS and imported in FORBIDDEN_IN_CORE:
            return f"core layer {src} imports {imported}"
        return None
    if src in ("root", "edge") or imported == PACKAGE:
        return None
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


def all_violations(modules: dict[str, Path]) -> dict[tuple[str, str], str]:
    out = {}
    for name, path in modules.items():
        for imported in sorted(imports_of(name, path.read_text(), path.name == "__init__.py", modules)):
            why = violation(name, imported)
            if why:
                out[(name, imported)] = why
    return out


def _describe(violations) -> str:
    return "\n".join(f"  {a} -> {b}: {why}" for (a, b), why in sorted(violations.items()))


# --------------------------------------------------------------------------- tests


def test_no_new_back_edges():
    modules = package_modules()
    assert len(modules) > 20 and "swarm_jax.physics.engine" in modules
    found = all_violations(modules)
    new = {edge: why for edge, why in found.items() if edge not in KNOWN_BACK_EDGES}
    assert not new, "imports against the layering (physics < swarm < env < agents < training; " \
                    "edges on top):\n" + _describe(new)


def test_known_back_edges_still_exist():
    found = all_violations(package_modules())
    gone = [edge for edge in KNOWN_BACK_EDGES if edge not in found]
    assert not gone, f"fixed back-edges, remove them from KNOWN_BACK_EDGES: {gone}"
    for edge, reason in KNOWN_BACK_EDGES.items():
        assert reason.endswith("to be removed: issue 13"), edge


def test_every_module_has_a_layer():
    for name in package_modules():
        group_of(name)


# The checker itself, on synthetic modules: it must see each kind of import.
CHECKER_CASES = [
    ("swarm_jax.physics.fake", False, "def f():\n    from ..agents import ppo\n",
     {("swarm_jax.physics.fake", "swarm_jax.agents.ppo")}),
    ("swarm_jax.swarm", True, "from .policy import x\nfrom . import weights\n", set()),
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
]


@pytest.mark.parametrize("module, is_package, source, expected", CHECKER_CASES)
def test_checker_sees_every_kind_of_import(module, is_package, source, expected):
    modules = package_modules()
    found = {(module, imported) for imported in imports_of(module, source, is_package, modules)
             if violation(module, imported)}
    assert found == expected
