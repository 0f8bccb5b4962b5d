"""The library stays a library: importing every tailseg module loads no ZenML, and the modules
import each other without cycles."""

import ast
import subprocess
import sys
from pathlib import Path

import tailseg

CHECK = """
import importlib, pkgutil, sys
import tailseg
names = [m.name for m in pkgutil.walk_packages(tailseg.__path__, "tailseg.")]
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m == "zenml" or m.startswith("zenml."))
print(len(names), "modules")
sys.exit(f"zenml imported: {loaded[:5]}" if loaded else 0)
"""


def test_no_tailseg_module_imports_zenml():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[0]) > 20


def _imported_tailseg_modules(path, names: set[str]) -> set[str]:
    """The tailseg modules a file imports anywhere (in functions too), with their packages."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
    imported |= {".".join(name.split(".")[:k]) for name in imported
                 for k in range(1, name.count(".") + 1)}
    return imported & names


def _import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while (top := stack.pop()) != module:
                component.append(top)
            if component:
                cycles.append(sorted([module, *component]))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_tailseg_modules_import_each_other_without_cycles():
    """Imports flow one way, deferred (in-function) imports included: a cycle such as
    tailseg.backends <-> tailseg.serving.client means neither module can stand alone."""
    root = Path(tailseg.__file__).parent
    files = {".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(
        ".__init__"): path for path in root.rglob("*.py")}
    graph = {name: _imported_tailseg_modules(path, set(files)) - {name}
             for name, path in files.items()}
    assert graph["tailseg.backends"] >= {"tailseg.predictor", "tailseg.serving.client"}
    assert _import_cycles(graph) == []


def _imported_top_level(path: Path) -> set[str]:
    """The top-level packages a file imports anywhere (in functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
    return names


def test_no_tailseg_source_imports_zenml_or_the_pipeline_packages_even_deferred():
    """Importing every module (above) misses imports inside functions: the library's source
    names neither ZenML nor the ZenML layers (pipelines, steps) anywhere."""
    root = Path(tailseg.__file__).parent
    offenders = {str(path.relative_to(root.parent)): sorted(found)
                 for path in sorted(root.rglob("*.py"))
                 if (found := _imported_top_level(path) & {"zenml", "pipelines", "steps"})}
    assert offenders == {}
    assert "zenml" in _imported_top_level(Path(__file__).parents[1] / "pipelines" / "cli.py")
