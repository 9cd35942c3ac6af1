"""The package's layers depend one way (docs/architecture.md): ``lab`` and ``viz`` on ``methods``, on
``training``, on ``models``, ``fusion``, ``registry`` and ``data``. Read from the sources with ``ast``:
the imports a module runs when it is imported (its top level, class bodies and module-level
``if``/``try`` blocks; not function bodies, not ``if TYPE_CHECKING:``). A lower layer reaches a
higher one only lazily (a function-level import, a registry's provider), never at import time."""
from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fusionkit"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_statements(body: list[ast.stmt]):
    """The statements run when the module is imported: not inside functions, nor ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_statements(node.body)
            yield from _import_time_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(h.body for h in node.handlers), node.orelse, node.finalbody):
                yield from _import_time_statements(block)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _import_time_statements(node.body)
        else:
            yield node


def import_time_imports(name: str) -> set[str]:
    """The fusionkit modules ``name`` imports at import time (``from pkg import sub`` counts as ``pkg.sub``
    when ``sub`` is a module, else as ``pkg``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _import_time_statements(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from package (level 1) or above it
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                full = f"{source}.{alias.name}"
                found.add(full if full in MODULES else source)
    return {m for m in found if m == "fusionkit" or m.startswith("fusionkit.")} - {name}


GRAPH = {name: import_time_imports(name) for name in MODULES}


def in_layer(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def test_the_sources_are_found_and_parsed():
    assert {"fusionkit", "fusionkit.cli", "fusionkit.fusion", "fusionkit.registry", "fusionkit.methods.recipe",
            "fusionkit.training.trainer", "fusionkit.lab.bench", "fusionkit.viz.plots"} <= set(MODULES)
    # the reader sees real edges: the methods import the training layer and the fusion contract
    assert "fusionkit.training.trainer" in GRAPH["fusionkit.methods.recipe"]
    assert "fusionkit.fusion" in GRAPH["fusionkit.methods.cma"]
    assert "fusionkit.methods.ccs" in GRAPH["fusionkit.methods"]  # `from fusionkit.methods import ccs`


def test_only_the_top_level_and_the_command_import_the_lab():
    offenders = {m: sorted(i for i in imports if in_layer(i, "fusionkit.lab")) for m, imports in GRAPH.items()
                 if m not in ("fusionkit", "fusionkit.cli") and not in_layer(m, "fusionkit.lab")}
    assert {m: i for m, i in offenders.items() if i} == {}


@pytest.mark.parametrize("lower, higher", [
    (("fusionkit.data", "fusionkit.models", "fusionkit.fusion", "fusionkit.registry"),
     ("fusionkit.training", "fusionkit.methods", "fusionkit.lab", "fusionkit.viz")),
    (("fusionkit.training",), ("fusionkit.methods", "fusionkit.lab", "fusionkit.viz")),
], ids=["core", "training"])
def test_no_layer_imports_a_higher_one_at_import_time(lower, higher):
    members = [m for m in GRAPH if any(in_layer(m, layer) for layer in lower)]
    assert members  # the layer exists
    upward = {m: sorted(i for i in GRAPH[m] if any(in_layer(i, h) for h in higher)) for m in members}
    assert {m: i for m, i in upward.items() if i} == {}


def test_no_import_cycle_among_the_modules():
    """Depth-first search for a back edge in the graph of import-time imports."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(GRAPH.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert cycles == []


def test_every_module_imports_first_in_a_fresh_state():
    """Each module imported before any other fusionkit module (the registries' providers load lazily
    and must not close a cycle at import time, whichever module comes first)."""
    saved = {k: v for k, v in sys.modules.items() if k == "fusionkit" or k.startswith("fusionkit.")}
    failures = {}
    try:
        for name in sorted(MODULES):
            for key in [k for k in sys.modules if k == "fusionkit" or k.startswith("fusionkit.")]:
                del sys.modules[key]
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 (report every module that fails)
                failures[name] = f"{type(e).__name__}: {e}"
    finally:
        for key in [k for k in sys.modules if k == "fusionkit" or k.startswith("fusionkit.")]:
            del sys.modules[key]
        sys.modules.update(saved)  # the other tests keep the modules (and registries) they imported
    assert failures == {}


def test_core_registries_load_their_higher_layer_provider_only_when_used():
    """fusionkit.fusion and fusionkit.training.schedules import no method at import time; reading their
    registries imports fusionkit.methods (the blocks and the methods' schedules live there), and a
    registration from outside first loads the built-ins, so a built-in's name is refused."""
    import subprocess

    def run(code: str) -> list[str]:
        result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()

    loaded = "print(any(m.startswith('fusionkit.methods') for m in sys.modules))"
    assert run(f"""
import sys
from fusionkit.fusion import FUSIONS
from fusionkit.training.schedules import SCHEDULES
{loaded}
print(sorted(SCHEDULES))
{loaded}
print('conv' in FUSIONS and 'cma' in FUSIONS)
""") == ["False", "['alternate', 'ccs', 'finetune', 'joint', 'separate', 'svm', 'two_stage']", "True", "True"]
    assert run(f"""
import sys
from fusionkit.fusion import FusionBlock, register_fusion
{loaded}
class Mine(FusionBlock):
    def fuse(self, rgb, flow):
        return rgb, flow
try:
    register_fusion('conv')(Mine)
except ValueError as e:
    print(e)
""") == ["False", "a fusion block named 'conv' is already registered ('ConvFusion')"]
