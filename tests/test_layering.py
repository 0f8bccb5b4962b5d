"""The library stays a library: importing every tailseg module loads no ZenML."""

import subprocess
import sys

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
