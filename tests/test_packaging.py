"""Installing tailseg prints no deprecation warnings: the package metadata is in its current form
(PEP 639 SPDX licence string). Builds the wheel the way `pip install -e .` builds the package,
with this environment's setuptools and without network access."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_building_the_package_warns_of_nothing_deprecated(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    shutil.copy(ROOT / "README.md", source)
    for package in ("tailseg", "steps", "pipelines"):
        shutil.copytree(ROOT / package, source / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--verbose", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "wheels"), str(source)],
        capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "deprecat" not in output.lower(), [line for line in output.splitlines()
                                              if "deprecat" in line.lower()]
    (wheel,) = (tmp_path / "wheels").glob("tailseg-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith("/METADATA"))
        assert "License-Expression: Apache-2.0" in archive.read(metadata).decode().splitlines()
