"""Interrupted predictions lose nothing (issue 14): SIGTERM like SIGINT, leftovers of killed
runs cleaned up by the next run, and --overwrite replacing the outputs as one set, even when
the process dies between two renames. Real signals and real subprocesses."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tailseg.config import PredictConfig
from tailseg.errors import OutputWriteError, PredictionInterrupted
from tailseg.outputs import SCRATCH_PREFIX
from tailseg.predict import predict_scene
from tests.test_predict import load_red_model
from tests.test_predict_checks import dn_scene, reflectance_scene

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG = PredictConfig(window=64, overlap=32, margin=8, progress=False)


@pytest.fixture(scope="module")
def red_model(tmp_path_factory):
    return load_red_model(tmp_path_factory.mktemp("red"))


def _scratch(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(f"{SCRATCH_PREFIX}*"))


def _threshold_of_outputs(folder: Path, stem: str = "scene") -> set[str]:
    """The threshold each of the three outputs records (they must agree)."""
    found = set()
    for name in (f"{stem}_probability.tif", f"{stem}_mask.tif"):
        with rasterio.open(folder / name) as dataset:
            found.add(dataset.tags()["TAILSEG_THRESHOLD"])
    collection = json.loads((folder / f"{stem}_tailings.geojson").read_text())
    found.add(str(collection["properties"]["threshold"]))
    return found


def _big_scene(path: Path) -> Path:
    """1200 x 1280 pixels of the test landscape: about 1500 windows of 64 pixels."""
    tiles = np.tile(reflectance_scene(), (1, 10, 8))
    dn = np.round(tiles * 10000)
    from rasterio.transform import from_origin

    from tests.rasters import write_image

    return write_image(path, dn, "uint16", crs="EPSG:32723", nodata=0,
                       transform=from_origin(500000, 7776000, 10, 10))


def _wait_for_strips(process: subprocess.Popen, folder: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(folder.glob(f"{SCRATCH_PREFIX}*strips.tif")):
        if process.poll() is not None:
            raise AssertionError(f"finished before it could be interrupted: "
                                 f"{process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("no strip files appeared")
        time.sleep(0.05)
    time.sleep(0.3)  # well into the windows


def test_sigterm_in_process_removes_everything(red_model, tmp_path):
    path = dn_scene(tmp_path / "scene.tif", False)
    calls = []

    def terminated_midway(images):
        calls.append(len(images))
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return red_model(images)

    out = tmp_path / "out"
    with pytest.raises(PredictionInterrupted) as interrupt:
        predict_scene(path, terminated_midway, out, CONFIG.model_copy(update={"batch_size": 1}))
    assert interrupt.value.signal == signal.SIGTERM and len(calls) == 3
    assert not out.exists()  # nor the folder this run created
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back


@pytest.mark.slow  # about 18 s: two `tailseg predict` subprocesses, each importing TensorFlow
def test_cli_sigterm_mid_run_exits_143_and_a_killed_run_is_cleaned_up(red_model, tmp_path):
    scene = _big_scene(tmp_path / "big.tif")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "tailseg.cli", "predict", str(scene), "--out", str(out),
               "--model", str(red_model.path), "--window", "64", "--overlap", "32",
               "--margin", "8", "--batch-size", "1", "--no-progress"]
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for_strips(process, out)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM; temporary files removed" in stderr
    assert "Traceback" not in stderr
    assert not out.exists()
    # SIGKILL cannot be handled: the scratch files stay, named after the dead process...
    process = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    _wait_for_strips(process, out)
    process.kill()
    process.communicate(timeout=60)
    leftovers = _scratch(out)
    assert leftovers and all(name.startswith(f"{SCRATCH_PREFIX}{process.pid}-")
                             for name in leftovers)
    # ...and the next run in the folder removes them.
    small = dn_scene(tmp_path / "scene.tif", False)
    predict_scene(small, red_model, out, CONFIG)
    assert _scratch(out) == []
    assert sorted(p.name for p in out.iterdir()) == [
        "scene_mask.tif", "scene_probability.tif", "scene_tailings.geojson"]


def test_overwrite_failing_between_renames_keeps_the_old_set(red_model, tmp_path, monkeypatch):
    path = dn_scene(tmp_path / "scene.tif", False)
    out = tmp_path / "out"
    predict_scene(path, red_model, out, CONFIG.model_copy(update={"threshold": 0.4}))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace, calls = os.replace, []

    def disk_full_on_the_second_new_file(source, target):
        calls.append(target)
        if len(calls) == 5:  # 3 old outputs moved aside, 1 new one in place
            raise OSError(28, "No space left on device", str(target))
        return real_replace(source, target)

    monkeypatch.setattr("tailseg.outputs.os.replace", disk_full_on_the_second_new_file)
    with pytest.raises(OutputWriteError, match="No space left on device.*nothing was written"):
        predict_scene(path, red_model, out,
                      CONFIG.model_copy(update={"threshold": 0.6, "overwrite": True}))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _threshold_of_outputs(out) == {"0.4"}


CRASHING_RUN = textwrap.dedent("""
    import os, sys
    import numpy as np
    import tailseg.outputs
    from tailseg.config import PredictConfig
    from tailseg.predict import predict_scene

    real_replace, calls = os.replace, []

    def die_between_renames(source, target):
        calls.append(target)
        if len(calls) == 5:  # 3 old outputs moved aside, 1 new one in place
            os._exit(9)  # like SIGKILL or a power cut: no clean-up code runs
        return real_replace(source, target)

    tailseg.outputs.os.replace = die_between_renames
    predict_scene(sys.argv[1], lambda x: 1 / (1 + np.exp(-100 * (x[..., 2:] - 0.15))),
                  sys.argv[2], PredictConfig(window=64, overlap=32, margin=8, progress=False,
                                             threshold=0.6, overwrite=True))
""")


def test_overwrite_crashing_between_renames_is_completed_by_the_next_run(red_model, tmp_path):
    path = dn_scene(tmp_path / "scene.tif", False)
    out = tmp_path / "out"
    predict_scene(path, red_model, out, CONFIG.model_copy(update={"threshold": 0.4}))
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_RUN)
    run = subprocess.run([sys.executable, str(script), str(path), str(out)], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 9, run.stderr
    # Mid-swap: the journal and the old outputs moved aside are still there.
    assert any(name.endswith("-swap.json") for name in _scratch(out))
    # The next run in the folder completes the swap before anything else: all three new.
    predict_scene(dn_scene(tmp_path / "other.tif", False), red_model, out, CONFIG)
    assert _scratch(out) == []
    assert _threshold_of_outputs(out) == {"0.6"}


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


def test_leftovers_of_dead_runs_are_removed_and_those_of_live_runs_kept(red_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    stale = [out / f"{SCRATCH_PREFIX}{dead}-scene_probability.strips.tif",
             out / f".scene_probability.strips-{dead}.tif",  # names before issue 14
             out / f".scene_mask.tif.tmp-{dead}"]
    live = out / f"{SCRATCH_PREFIX}1-scene_mask.strips.tif"  # pid 1 is always running
    for path in (*stale, live):
        path.write_bytes(b"x" * 1000)
    predict_scene(dn_scene(tmp_path / "scene.tif", False), red_model, out, CONFIG)
    assert not any(path.exists() for path in stale)
    assert live.exists()


def test_user_files_named_like_scratch_files_survive(red_model, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    users = [out / f".thesis.tmp-{dead}", out / ".notes.strips-999999.tif",
             out / f".scene_mask.tif.tmp-{dead}-draft",  # a suffix after the pid
             out / f".other_mask.tif.tmp-{dead}"]  # another scene's old name: not this run's
    for path in users:
        path.write_text("the user's own file")
    stale = out / f".scene_mask.tif.tmp-{dead}"
    stale.write_bytes(b"x")
    with caplog.at_level("WARNING"):
        predict_scene(dn_scene(tmp_path / "scene.tif", False), red_model, out, CONFIG)
    assert all(path.read_text() == "the user's own file" for path in users)
    assert not stale.exists()
    assert f"removed 1 temporary files of stopped runs ({stale.name})" in caplog.text
