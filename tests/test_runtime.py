"""The console a user sees: one line per event, no start-up noise, and TensorFlow's settings in
every process that runs it. The end-to-end check runs `tailseg run` as a user would, in a fresh
process with a fresh ZenML store and none of this test suite's environment settings."""

import json
import logging
import os
import re
import subprocess
import sys

import pytest

from tailseg import runtime
from tests.test_pipeline import EIGHT_AND_TRUNCATED, subset, write_config

STEPS = ["dataset_validator", "data_splitter", "hyperparameter_tuner", "model_trainer",
         "model_evaluator", "model_gate", "model_exporter", "model_promoter"]
# Settings conftest.py makes for the whole suite; a user's shell has none of them.
SUITE_SETTINGS = ["TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES", "TF_CPU_ALLOCATOR_USE_BFC",
                  "ZENML_LOGGING_VERBOSITY", "ZENML_ENABLE_RICH_TRACEBACK"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A console line without its time, level and logger name, the parts in which two copies of
# one record differ when two handlers print it.
PREFIX = re.compile(r"^(\d\d:\d\d:\d\d )?((DEBUG|INFO|WARNING|ERROR|CRITICAL) )?([\w.]+: )?")


@pytest.fixture(scope="module")
def user_run(tmp_path_factory, bundled_data):
    """`tailseg run` on the tiny configuration of test_pipeline.py, in a subprocess."""
    root = tmp_path_factory.mktemp("console")
    data = subset(root / "data", bundled_data, EIGHT_AND_TRUNCATED)
    config = write_config(root / "zenml.yaml", data, root / "exports")
    env = {key: value for key, value in os.environ.items() if key not in SUITE_SETTINGS}
    env |= {"ZENML_CONFIG_PATH": str(root / "zenml" / "config"),
            "ZENML_LOCAL_STORES_PATH": str(root / "zenml" / "stores"),
            "ZENML_ANALYTICS_OPT_IN": "false"}
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--config", str(config),
                             "--json", str(root / "summary.json")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def test_each_event_is_printed_once_in_one_format(user_run):
    _, result = user_run
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    messages = [PREFIX.sub("", ANSI.sub("", line)) for line in lines]
    repeated = sorted({m for m in messages if messages.count(m) > 1})
    assert repeated == [], "\n".join(result.stderr.splitlines()[:60])
    console = result.stdout + result.stderr
    assert "\x1b[" not in console  # ZenML's coloured second copy of every line is gone
    for step in STEPS:
        assert console.count(f"Step `{step}` has started") == 1
    assert console.count("split: {") == 1


def test_no_alarming_lines_for_expected_situations(user_run):
    _, result = user_run
    console = result.stdout + result.stderr
    for noise in ("E0000", "cuInit", "absl::InitializeLog", "oneDNN custom operations",
                  "Could not find cuda drivers", "eprecat", "Traceback"):
        assert noise not in console, noise
    assert not re.search(r"^\d\d:\d\d:\d\d (WARNING|ERROR)", result.stderr, re.MULTILINE)
    if not runtime.nvidia_driver_present():
        # Logged by the process that imported TensorFlow and trained: it ran with the BFC
        # allocator although this suite's environment was not passed on.
        assert re.search(r"no GPU found: running on the CPU \(\d+ cores, "
                         r"TF_CPU_ALLOCATOR_USE_BFC=true\)", result.stderr)


def test_summary_says_how_long_each_stage_took(user_run):
    root, result = user_run
    summary = json.loads(result.stdout)  # stdout is not a terminal here: the JSON summary
    assert summary == json.loads((root / "summary.json").read_text())
    assert list(summary["stages"]) == STEPS
    assert all(seconds > 0 for seconds in summary["stages"].values()), summary["stages"]
    assert sum(summary["stages"].values()) <= summary["seconds"] + 1
    report = result.stderr[result.stderr.index("\nRun training"):]
    assert re.search(r"completed in (\d+\.\d s|\d+ min \d\d s)\.", report)
    assert re.search(r"stages: +dataset_validator \d+\.\d s, data_splitter", report)
    assert "test:     iou " in report and "gate:     passed" in report
    assert f"TF Serving: {summary['export']['saved_model']}" in report


def test_step_logs_keep_every_record_once(user_run):
    root, _ = user_run
    stored = "".join(path.read_text() for path in (root / "zenml" / "stores").rglob("logs/*.log"))
    assert stored.count("split: {") == 1
    if not runtime.nvidia_driver_present():
        assert stored.count("no GPU found: running on the CPU") == 1


def test_tensorflow_environment_keeps_the_users_values(monkeypatch):
    assert runtime.tensorflow_environment({})["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    mine = {"TF_CPU_ALLOCATOR_USE_BFC": "false", "PATH": "/bin"}
    assert runtime.tensorflow_environment(mine) == mine
    monkeypatch.setenv("TF_CPU_ALLOCATOR_USE_BFC", "false")
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    runtime.apply_tensorflow_environment()
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "false"
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == ("2" if runtime.nvidia_driver_present()
                                                  else "3")


def test_tailseg_subprocesses_get_the_allocator(tmp_path, monkeypatch):
    """What the serving process, infra validation and ONNX export hand their children."""
    monkeypatch.delenv("TF_CPU_ALLOCATOR_USE_BFC", raising=False)
    script = "import os, sys; sys.stdout.write(os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', '-'))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=runtime.tensorflow_environment(), check=True)
    assert result.stdout == "true"


def test_startup_filter_passes_on_unknown_lines(capfd):
    with runtime.filtered_startup_lines():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                    b"written to STDERR\n")
        os.write(2, b"I0000 00:00:1795790977.027180    4958 cudart_stub.cc:31] Could not find "
                    b"cuda drivers on your machine, GPU will not be used.\n")
        os.write(2, b"F0000 something TensorFlow really means\n")
        print("a Python warning", file=sys.stderr)
    lines = capfd.readouterr().err.splitlines()
    assert sorted(lines) == ["F0000 something TensorFlow really means", "a Python warning"]


@pytest.mark.parametrize(("verbosity", "shown"), [
    ("quiet", ["a warning"]),
    ("normal", ["tailseg info", "a warning"]),
    ("verbose", ["tailseg debug", "tailseg info", "library info", "a warning"]),
])
def test_verbosity_chooses_what_the_console_shows(verbosity, shown, capsys):
    root = logging.getLogger()
    level = root.level
    handler = runtime.configure_console(verbosity)
    try:
        logging.getLogger("tailseg.example").debug("tailseg debug")
        logging.getLogger("tailseg.example").info("tailseg info")
        logging.getLogger("some_library").info("library info")
        logging.getLogger("some_library").warning("a warning")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    err = capsys.readouterr().err
    assert [line for line in ("tailseg debug", "tailseg info", "library info", "a warning")
            if line in err] == shown
    assert re.search(r"^\d\d:\d\d:\d\d WARNING .*a warning$", err, re.MULTILINE)


def test_expected_warnings_are_hidden_and_others_shown(capsys):
    root = logging.getLogger()
    level = root.level
    handler = runtime.configure_console("normal")
    try:
        fonts = logging.getLogger("matplotlib.font_manager")
        fonts.warning("findfont: Font family ['STIXGeneral'] not found. Falling back to "
                      "DejaVu Sans.")
        fonts.warning("a font file is unreadable")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    err = capsys.readouterr().err
    assert "findfont" not in err
    assert "a font file is unreadable" in err


@pytest.mark.parametrize("verbose", [False, True])
def test_only_verbose_shows_where_a_tailseg_error_was_raised(verbose, tmp_path):
    flags = ["-v"] if verbose else []
    result = subprocess.run([sys.executable, "-m", "tailseg.cli", *flags, "split",
                             str(tmp_path / "missing")], capture_output=True, text=True,
                            env=runtime.tensorflow_environment())
    assert result.returncode == 2
    assert f"tailseg split: error: {tmp_path / 'missing'}" in result.stderr
    assert ("Traceback (most recent call last)" in result.stderr) is verbose
