"""Benchmark whole-scene prediction: time and peak memory per backend over growing scenes.

Each (scene size, backend) runs in a fresh process, so peak memory (ru_maxrss) is that run's.
The model is the CPU default (ModelConfig(): base_filters 16, depth 4) with random weights
and an output bias of -8 (see export_cpu_model); speed does not depend on the weights.
Scenes are uint16 digital numbers in UTM, tiled GeoTIFFs, written strip by strip.

    .venv/bin/python benchmarks/bench_predict.py [--sizes 1024 2048 4096 8192]
        [--backends tf onnx] [--repeats 1] [--margin M --overlap O] [--results PATH]

Margin and overlap default to prediction's defaults (derived from the model's receptive field:
112 / 256 for this model). Writes benchmarks/results/predict.json (or --results) with medians
over --repeats runs, the fraction of the float32 matrix-product rate measured in the same run,
and minor page faults per megapixel of the prediction (model loading excluded).
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from tailseg.runtime import apply_tensorflow_environment  # noqa: E402

apply_tensorflow_environment()  # the allocator, as the CLI sets it; the children inherit it

from benchmarks.common import matmul_gflops, minor_faults, write_result  # noqa: E402

S2_TILE_PIXELS = 10980 * 10980


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_scene(path: Path, size: int, seed: int = 0) -> Path:
    """A size x size uint16 scene (DN, nodata 0) in UTM 23S, written in 512-row strips."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint16",
               "crs": "EPSG:32723", "transform": from_origin(500000, 7800000, 10, 10),
               "nodata": 0, "tiled": True, "blockxsize": 512, "blockysize": 512}
    with rasterio.open(path, "w", **profile) as dataset:
        for top in range(0, size, 512):
            rows = min(512, size - top)
            strip = rng.normal([[[600]], [[800]], [[700]]], 150, (3, rows, size))
            strip[:, :, : size // 20] = 0  # a nodata border, as on Sentinel-2 tile edges
            dataset.write(np.clip(strip, 0, 10000).astype("uint16"),
                          window=Window(0, top, size, rows))
    return path


def child(scene: str, model: str, backend: str, out: str, margin: str = "",
          overlap: str = "") -> None:
    """One timed run; prints a JSON line. Empty margin/overlap: prediction's defaults."""
    from tailseg.backends import load_predictor
    from tailseg.config import PredictConfig
    from tailseg.predict import predict_scene

    predictor = load_predictor(model, backend)
    after_load = rss_mib()
    blending = {key: int(value) for key, value in (("margin", margin), ("overlap", overlap))
                if value}
    faults_before = minor_faults()
    result = predict_scene(scene, predictor, out, PredictConfig(
        convention="dn", progress=False, overwrite=True, **blending))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": result.seconds, "peak_rss_mib": peak,
                      "minor_faults": minor_faults() - faults_before,
                      "rss_after_load_mib": after_load, "n_windows": result.n_windows,
                      "n_sites": result.n_sites, "timings": result.timings,
                      "margin": result.provenance["margin"],
                      "overlap": result.provenance["overlap"]}))


def export_cpu_model(directory: Path) -> tuple[dict, float]:
    import numpy as np

    from tailseg.config import ModelConfig
    from tailseg.export import export_model
    from tailseg.model import build_unet, flops_per_pixel

    config = ModelConfig()
    model = build_unet(config, np.array([0.06, 0.08, 0.07]), np.array([0.015, 0.015, 0.015]))
    # Random weights mark about half of a noise scene as tailings, tens of thousands of specks
    # per megapixel; a bias of -8 on the output logit leaves almost none, as a trained model
    # would on a scene without mines. The FLOPs are the same.
    model.get_layer("probability").bias.assign([-8.0])
    return export_model(model, directory, "bench", config.multiple), flops_per_pixel(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--backends", nargs="+", default=["tf", "onnx"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--margin", default="", help="Default: from the model")
    parser.add_argument("--overlap", default="", help="Default: from the model")
    parser.add_argument("--results", default="predict",
                        help="A name under benchmarks/results/ or a path ending in .json")
    parser.add_argument("--child", nargs=6, metavar=("SCENE", "MODEL", "BACKEND", "OUT",
                                                      "MARGIN", "OVERLAP"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    peak_flops = matmul_gflops() * 1e9  # this CPU's float32 matrix-product rate, measured now
    work = Path(tempfile.mkdtemp(prefix="bench-predict-"))
    export, flops = export_cpu_model(work / "exports")
    models = {"tf": export["saved_model"], "onnx": export["onnx"]}
    runs = []
    for size in args.sizes:
        scene = write_scene(work / f"scene_{size}.tif", size)
        for backend in args.backends:
            samples = []
            for _ in range(args.repeats):
                command = [sys.executable, __file__, "--child", str(scene), models[backend],
                           backend, str(work / "out"), args.margin, args.overlap]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
            seconds = statistics.median(s["seconds"] for s in samples)
            pixels_per_second = size * size / seconds
            run = {"size": size, "backend": backend, "megapixels": size * size / 1e6,
                   "seconds": round(seconds, 2),
                   "megapixels_per_second": round(pixels_per_second / 1e6, 4),
                   "peak_rss_mib": round(statistics.median(s["peak_rss_mib"] for s in samples)),
                   "rss_after_load_mib": round(statistics.median(
                       s["rss_after_load_mib"] for s in samples)),
                   "model_gflops_per_second": round(flops * pixels_per_second / 1e9, 2),
                   "fraction_of_matmul_peak": round(flops * pixels_per_second / peak_flops, 4),
                   "minor_faults_per_megapixel": round(statistics.median(
                       s["minor_faults"] for s in samples) / (size * size / 1e6)),
                   "projected_s2_tile_minutes": round(S2_TILE_PIXELS / pixels_per_second / 60, 1),
                   "n_windows": samples[0]["n_windows"], "n_sites": samples[0]["n_sites"],
                   "stage_seconds": samples[0]["timings"], "repeats": args.repeats,
                   "margin": samples[0]["margin"], "overlap": samples[0]["overlap"]}
            runs.append(run)
            print(json.dumps(run), flush=True)
        scene.unlink()
    write_result(args.results, {"model": "ModelConfig() (base_filters 16, depth 4)",
                                "flops_per_pixel": flops, "window": 1024,
                                "cpu_matmul_gflops": round(peak_flops / 1e9, 1), "runs": runs})


if __name__ == "__main__":
    main()
