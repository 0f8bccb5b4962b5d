"""TensorFlow's CPU allocator, default against BFC (TF_CPU_ALLOCATOR_USE_BFC=true), measured in
fresh processes in the same run, alternating the settings.

Which allocator TensorFlow uses by default depends on the CPU: the pip package turns its oneDNN
operations on only for CPUs with AVX512_VNNI, AVX512_BF16 or AMX, and with them a pooling
allocator of its own; on other x86 CPUs (AVX2 only, as the AMD EPYC of issue 13) it falls back
to the plain CPU allocator, which hands large tensors back to the OS and faults them in again
on every step. So both allocators are measured twice: with oneDNN as this CPU has it, and with
TF_ENABLE_ONEDNN_OPTS=0, the path CPUs without those instructions take.


- training: 5 steps (after one warm-up step) of the default U-Net (RunConfig(): base_filters
  16, depth 4, batch 8, 256 x 256 crops): ms per step, minor page faults per step and system
  CPU seconds, from resource.getrusage in the training process;
- prediction: `tailseg predict` on a 2048 x 2048 scene (the CPU default model, exported as in
  bench_predict.py): wall and prediction seconds, minor page faults of the whole process.

    .venv/bin/python benchmarks/bench_allocator.py [--repeats 1] [--steps 5] [--size 2048]

Writes benchmarks/results/allocator.json with medians, ratios (bfc / default), the CPU model
and flags and the load average before and after (other work on the machine shows there).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import cpu, write_result  # noqa: E402

# name: (TF_CPU_ALLOCATOR_USE_BFC, TF_ENABLE_ONEDNN_OPTS or None for TensorFlow's choice)
SETTINGS = {"default": ("false", None), "bfc": ("true", None),
            "default_onednn_off": ("false", "0"), "bfc_onednn_off": ("true", "0")}
PAIRS = [("default", "bfc"), ("default_onednn_off", "bfc_onednn_off")]


def usage() -> tuple[float, int, float, float]:
    rusage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), rusage.ru_minflt, rusage.ru_stime, rusage.ru_utime


def train_child(steps: int) -> None:
    """Time `steps` training steps in this process; print one JSON line."""
    import numpy as np

    from tailseg.config import RunConfig
    from tailseg.model import build_unet
    from tailseg.train import compile_model

    config = RunConfig()
    model = build_unet(config.model, np.full(3, 0.1), np.full(3, 0.05))
    compile_model(model, config.training)
    size, batch = config.training.crop_size, config.training.batch_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0.02, 0.4, (batch, size, size, 3)).astype(np.float32)
    y = (rng.uniform(size=(batch, size, size, 1)) > 0.97).astype(np.float32)
    model.train_on_batch(x, y)  # tracing and warm-up
    per_step = []
    for _ in range(steps):
        before = usage()
        model.train_on_batch(x, y)
        after = usage()
        per_step.append({"ms": (after[0] - before[0]) * 1e3, "minor_faults": after[1] - before[1],
                         "system_seconds": after[2] - before[2],
                         "user_seconds": after[3] - before[3]})
    print(json.dumps({"allocator_env": os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"),
                      "steps": per_step}))


def setting_env(setting: str) -> dict[str, str]:
    use_bfc, onednn = SETTINGS[setting]
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    return env | {"TF_CPU_ALLOCATOR_USE_BFC": use_bfc} | (
        {"TF_ENABLE_ONEDNN_OPTS": onednn} if onednn is not None else {})


def run_training(setting: str, steps: int) -> dict:
    env = setting_env(setting) | {"TF_CPP_MIN_LOG_LEVEL": "0"}
    done = subprocess.run([sys.executable, __file__, "--train-child", str(steps)], env=env,
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    steps_ = result["steps"]
    return {"ms_per_step": statistics.median(s["ms"] for s in steps_),
            "minor_faults_per_step": statistics.median(s["minor_faults"] for s in steps_),
            "system_seconds": sum(s["system_seconds"] for s in steps_),
            "user_seconds": sum(s["user_seconds"] for s in steps_),
            "onednn_on": "oneDNN custom operations are on" in done.stderr,
            "allocator_env": result["allocator_env"]}


def run_prediction(setting: str, scene: Path, model: str, out: Path) -> dict:
    """`tailseg predict` in a child process; its rusage from os.wait4."""
    env = setting_env(setting)
    command = [sys.executable, "-m", "tailseg.cli", "--quiet", "predict", str(scene),
               "--model", model, "--out", str(out), "--convention", "dn", "--overwrite",
               "--no-progress", "--window", "1024", "--overlap", "128", "--margin", "32"]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as stdout:
        process = subprocess.Popen(command, env=env, stdout=stdout, stderr=subprocess.DEVNULL)
        _, status, rusage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        if status != 0:
            raise RuntimeError(f"{' '.join(command)} exited with status {status}")
        stdout.seek(0)
        result = json.loads(stdout.read())
    return {"wall_seconds": wall, "predict_seconds": result["seconds"],
            "minor_faults": rusage.ru_minflt, "system_seconds": rusage.ru_stime,
            "user_seconds": rusage.ru_utime}


def medians(samples: list[dict]) -> dict:
    keys = [key for key, value in samples[0].items()
            if isinstance(value, int | float) and not isinstance(value, bool)]
    return {key: round(statistics.median(s[key] for s in samples), 3) for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="Processes per setting and task")
    parser.add_argument("--steps", type=int, default=5, help="Timed training steps per process")
    parser.add_argument("--size", type=int, default=2048, help="Side of the predicted scene")
    parser.add_argument("--train-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_child:
        train_child(args.train_child)
        return
    from benchmarks.bench_predict import export_cpu_model, write_scene

    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-allocator-"))
    export, _ = export_cpu_model(work / "exports")
    scene = write_scene(work / "scene.tif", args.size)
    samples: dict[str, dict[str, list]] = {s: {"training": [], "prediction": []}
                                           for s in SETTINGS}
    for repeat in range(args.repeats):
        # The two settings of a pair one after the other, in alternating order, so drift in the
        # machine's load hits both.
        order = [name for pair in PAIRS for name in (pair if repeat % 2 == 0 else pair[::-1])]
        for setting in order:
            samples[setting]["training"].append(run_training(setting, args.steps))
            samples[setting]["prediction"].append(
                run_prediction(setting, scene, export["saved_model"], work / setting))
            print(setting, json.dumps(samples[setting]["training"][-1]),
                  json.dumps(samples[setting]["prediction"][-1]), file=sys.stderr, flush=True)
    summary = {setting: {task: medians(runs) for task, runs in tasks.items()}
               for setting, tasks in samples.items()}
    ratios = {f"{bfc}/{default}": {
        task: {key: round(summary[bfc][task][key] / summary[default][task][key], 3)
               for key in summary[bfc][task] if summary[default][task][key]}
        for task in ("training", "prediction")} for default, bfc in PAIRS}
    write_result("allocator", {
        "cpu": cpu(), "tensorflow_flags": "pip tensorflow==2.21.0 (oneDNN on)",
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "settings": {name: f"TF_CPU_ALLOCATOR_USE_BFC={bfc}" + (
            f" TF_ENABLE_ONEDNN_OPTS={onednn}" if onednn else "")
            for name, (bfc, onednn) in SETTINGS.items()},
        "training_setup": f"RunConfig() U-Net, batch 8, 256 x 256, {args.steps} steps after "
                          "one warm-up step, per process",
        "prediction_setup": f"tailseg predict, {args.size} x {args.size} uint16 scene, CPU "
                            "default model, tf backend, whole process",
        "repeats": args.repeats, "medians": summary, "ratios_bfc_over_default": ratios,
        "samples": samples})


if __name__ == "__main__":
    main()
