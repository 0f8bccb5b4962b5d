"""Training throughput of the default (CPU) U-Net, in 448 x 448 chip equivalents per second,
compared with this CPU's float32 FLOP limit measured in the same run, and the minor page
faults per step (TensorFlow's allocator; tailseg sets TF_CPU_ALLOCATOR_USE_BFC=true, as here).

Run: .venv/bin/python benchmarks/bench_training.py [--steps N] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tailseg.runtime import apply_tensorflow_environment  # noqa: E402

apply_tensorflow_environment()  # as the CLI does, before TensorFlow loads

import numpy as np  # noqa: E402

from benchmarks.common import matmul_gflops, minor_faults, write_result  # noqa: E402
from tailseg.config import MODEL_PRESETS, RunConfig  # noqa: E402
from tailseg.model import build_unet, flops_per_pixel  # noqa: E402
from tailseg.train import compile_model  # noqa: E402

CHIP_PIXELS = 448 * 448
# A training step costs about 3 forward passes (forward, and backward for inputs and weights).
TRAIN_FLOP_FACTOR = 3.0


def measure(model_config, train_config, steps: int, repeats: int) -> dict:
    model = build_unet(model_config, np.full(3, 0.1), np.full(3, 0.05))
    compile_model(model, train_config)
    size, batch = train_config.crop_size, train_config.batch_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0.02, 0.4, (batch, size, size, 3)).astype(np.float32)
    y = (rng.uniform(size=(batch, size, size, 1)) > 0.97).astype(np.float32)
    model.train_on_batch(x, y)  # trace and warm up
    rates, faults = [], []
    for _ in range(repeats):
        started, faults_before = time.perf_counter(), minor_faults()
        for _ in range(steps):
            model.train_on_batch(x, y)
        rates.append(steps * batch * size * size / (time.perf_counter() - started))
        faults.append((minor_faults() - faults_before) / steps)
    pixels_per_second = statistics.median(rates)
    forward = flops_per_pixel(model)
    return {"base_filters": model_config.base_filters, "depth": model_config.depth,
            "crop_size": size, "batch_size": batch,
            "forward_flops_per_pixel": forward,
            "chips_per_second": pixels_per_second / CHIP_PIXELS,
            "ms_per_step": batch * size * size / pixels_per_second * 1e3,
            "minor_faults_per_step": statistics.median(faults),
            "train_gflops_per_second": pixels_per_second * forward * TRAIN_FLOP_FACTOR / 1e9,
            "all_rates_pixels_per_second": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="training",
                        help="A name under benchmarks/results/ or a path ending in .json")
    args = parser.parse_args()
    config = RunConfig()
    peak = matmul_gflops()
    results = [measure(config.model, config.training, args.steps, args.repeats)]
    for result in results:
        result["fraction_of_matmul_peak"] = result["train_gflops_per_second"] / peak
    seed = MODEL_PRESETS["seed"]
    write_result(args.out, {"cpu_matmul_gflops": peak, "default_model": results[0],
                              "seed_forward_flops_per_pixel": flops_per_pixel(
                                  build_unet(seed, np.zeros(3), np.ones(3)))})


if __name__ == "__main__":
    main()
