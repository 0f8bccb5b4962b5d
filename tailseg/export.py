"""Export of a trained model: SavedModel in TF Serving layout and ONNX, versioned, atomic.

Serving contract (tested by reloading): signature "serving_default", input "image" float32
[N, H, W, 3] top-of-atmosphere reflectance in band order B2, B3, B4, any H and W; output
"probability" float32 [N, H, W, 1]. Inputs are padded inside the signature to the U-Net's
multiple and cropped back, so callers never pad.

Signature "serving_bytes" is the same model for REST clients that send binary: input
"image_bytes" string [N] (each image's float32 [H, W, 3] values, little-endian, row-major; in
REST JSON as {"b64": ...}, TF Serving's form for binary), "height" and "width" int32 [N] (equal
within a request); output "probability" as above. JSON text of 600 000 numbers costs more to
write and parse than the model call; base64 costs almost nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import keras
import tensorflow as tf

from tailseg.accelerate import dtype_policy
from tailseg.constants import BANDS
from tailseg.ensemble import average_models, members_of
from tailseg.errors import ExportError, ModelFormatError
from tailseg.runtime import cpu_subprocess_environment

SIGNATURE = "serving_default"
INPUT_NAME = "image"
OUTPUT_NAME = "probability"
BYTES_SIGNATURE = "serving_bytes"
BYTES_INPUTS = ("image_bytes", "height", "width")
METADATA_FILE = "tailseg.json"  # inside assets.extra/, beside TF Serving's warm-up file
ONNX_METADATA_KEY = "tailseg"  # the same metadata, as JSON in the ONNX model's metadata_props


def float32_model(model: keras.Model) -> keras.Model:
    """model itself when every layer computes in float32, else a float32 copy of it.

    A model trained under mixed_float16 keeps float16 layers (tailseg.model.build_unet builds a
    Functional model). Exported as it is, TF Serving and
    ONNX Runtime would compute in float16 (even on CPUs) and differ from each other by about
    1e-3, past the parity tolerance. The copy has the same layers and configuration with a
    float32 policy, and the same weights (mixed precision keeps its variables in float32, so the
    copy is exact).

    Raises:
        ExportError: a layer of the copy still computes in another dtype.
    """
    members = members_of(model)
    if len(members) > 1:  # each member of an ensemble on its own, then their mean again
        copies = [float32_model(member) for member in members]
        if all(copy is member for copy, member in zip(copies, members, strict=True)):
            return model
        return average_models(copies)
    if all(_float32(layer) for layer in model.layers):
        return model

    config = model.get_config()  # a Functional model's layers with their dtype policies
    for layer in config["layers"]:
        if layer["class_name"] != "InputLayer":  # its dtype is the input's, float32
            layer["config"]["dtype"] = "float32"
    with dtype_policy("float32"):
        copy = keras.Model.from_config(config)
    for layer in copy.layers:
        layer.set_weights(model.get_layer(layer.name).get_weights())
    mixed = [layer.name for layer in copy.layers if not _float32(layer)]
    if mixed:
        raise ExportError(f"{model.name}: layers {mixed} do not compute in float32 after the "
                          "float32 rebuild; the export would serve float16")
    return copy


def _float32(layer: keras.layers.Layer) -> bool:
    return layer.compute_dtype == "float32" and layer.variable_dtype == "float32"


def serving_function(model: keras.Model, multiple: int) -> tf.types.experimental.GenericFunction:
    """A tf.function taking raw reflectance of any size and returning {"probability": ...}.

    It runs float32_model(model), so evaluation (tailseg.workflow.keras_predict) scores what
    the export serves, also for a model trained in mixed precision."""
    model = float32_model(model)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, len(BANDS)], tf.float32,
                                                name=INPUT_NAME)])
    def serve(image):
        height, width = tf.shape(image)[1], tf.shape(image)[2]
        # Non-negative operands only: tf2onnx maps FloorMod of negatives wrongly.
        pad_h = (multiple - height % multiple) % multiple
        pad_w = (multiple - width % multiple) % multiple
        # Pad with each image's band means, which the normalisation maps to about zero. The
        # image's own pixels pass through bit for bit (x + 0 * mean), so a window's output never
        # depends on its mean at rounding level.
        paddings = [[0, 0], [0, pad_h], [0, pad_w], [0, 0]]
        mean = tf.reduce_mean(image, axis=[1, 2], keepdims=True)
        outside = tf.pad(tf.zeros_like(image[..., :1]), paddings, constant_values=1.0)
        padded = tf.pad(image, paddings) + outside * mean
        members = members_of(model)
        if len(members) == 1:
            output = model(padded, training=False)
        else:  # one member at a time: in parallel their activations add up (peak memory)
            total = None
            for member in members:
                with tf.control_dependencies([] if total is None else [total]):
                    out = member(tf.identity(padded, name="member_input"), training=False)
                total = out if total is None else total + out
            output = total / len(members)
        probability = output[:, :height, :width, :]
        return {OUTPUT_NAME: tf.identity(probability, name=OUTPUT_NAME)}

    return serve


def bytes_serving_function(serve: tf.types.experimental.GenericFunction
                           ) -> tf.types.experimental.GenericFunction:
    """serve behind the "serving_bytes" signature: raw float32 images plus their height and
    width. A request whose sizes disagree with its bytes fails with INVALID_ARGUMENT."""
    image_bytes, height, width = BYTES_INPUTS

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=image_bytes),
                                  tf.TensorSpec([None], tf.int32, name=height),
                                  tf.TensorSpec([None], tf.int32, name=width)])
    def serve_bytes(image_bytes, height, width):
        flat = tf.io.decode_raw(image_bytes, tf.float32, little_endian=True)  # equal lengths
        count = tf.shape(image_bytes)[0]
        checks = [
            tf.debugging.assert_equal(tf.shape(height)[0], count, message="one height per image"),
            tf.debugging.assert_equal(tf.shape(width)[0], count, message="one width per image"),
            tf.debugging.assert_equal(height, height[0], message="heights differ in a request"),
            tf.debugging.assert_equal(width, width[0], message="widths differ in a request"),
            tf.debugging.assert_equal(tf.shape(flat)[1], height[0] * width[0] * len(BANDS),
                                      message="image_bytes length is not height x width x "
                                              f"{len(BANDS)} float32 values")]
        with tf.control_dependencies(checks):
            image = tf.reshape(flat, tf.stack([-1, height[0], width[0], len(BANDS)]))
        return serve(image)

    return serve_bytes


def write_saved_model(model: keras.Model, directory: str | Path, multiple: int,
                      metadata: dict | None = None,
                      extra_assets: dict[str, str] | None = None) -> Path:
    """Write the serving SavedModel to directory (which must not exist yet).

    metadata goes to assets.extra/tailseg.json; extra_assets maps file names to text written
    into assets.extra/ (e.g. the model card). A mixed-precision model is written as its
    float32 copy (float32_model).
    """
    directory = Path(directory)
    model = float32_model(model)
    archive = keras.export.ExportArchive()
    archive.track(model)
    serve = serving_function(model, multiple)
    archive.add_endpoint(SIGNATURE, serve)
    archive.add_endpoint(BYTES_SIGNATURE, bytes_serving_function(serve))
    archive.write_out(str(directory), verbose=False)
    extra = directory / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / METADATA_FILE).write_text(json.dumps(metadata or {}, indent=2, sort_keys=True))
    for name, text in (extra_assets or {}).items():
        (extra / name).write_text(text)
    return directory


def write_onnx(saved_model_dir: str | Path, onnx_path: str | Path, opset: int,
               metadata: dict | None = None) -> Path:
    """Convert the SavedModel's serving signature to ONNX with tf2onnx in a subprocess; the
    tailseg metadata (threshold, bands, version) goes into the model's metadata_props under
    ONNX_METADATA_KEY, so a copied model.onnx keeps its decision threshold."""
    onnx_path = Path(onnx_path)
    command = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved_model_dir),
               "--signature_def", SIGNATURE, "--opset", str(opset), "--output", str(onnx_path)]
    env = cpu_subprocess_environment()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0 or not onnx_path.is_file():
        raise ExportError(f"{saved_model_dir}: tf2onnx conversion failed:\n"
                          f"{result.stderr[-3000:]}")
    if metadata is not None:
        import onnx

        proto = onnx.load(str(onnx_path))
        onnx.helper.set_model_props(proto, {ONNX_METADATA_KEY: json.dumps(
            metadata, sort_keys=True, default=str)})
        onnx.save(proto, str(onnx_path))
    return onnx_path


def read_signature_defs(saved_model_dir: Path) -> dict:
    """SignatureDef protos of the serve meta graph, as TF Serving reports them in metadata."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((saved_model_dir / "saved_model.pb").read_bytes())
    graph = next((g for g in saved.meta_graphs if "serve" in g.meta_info_def.tags), None)
    if graph is None:
        raise ModelFormatError(f"{saved_model_dir}: no meta graph tagged 'serve'")
    return {k: v for k, v in graph.signature_def.items() if not k.startswith("__")}


def existing_versions(base_path: str | Path) -> list[int]:
    """Integer version sub-directories of a TF Serving model base path, ascending."""
    base_path = Path(base_path)
    if not base_path.is_dir():
        return []
    return sorted(int(p.name) for p in base_path.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(*base_paths: str | Path) -> int:
    """One more than the largest version under any of the base paths (1 when none)."""
    return 1 + max((v for base in base_paths for v in existing_versions(base)), default=0)


@contextmanager
def staged_directory(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling of final; rename it into place only if the block succeeds.

    A crash or an error leaves no partial final directory. An existing final is never
    overwritten.
    """
    with staged_directories(final) as (staging,):
        yield staging


@contextmanager
def staged_directories(*finals: Path) -> Iterator[tuple[Path, ...]]:
    """staged_directory for several finals published together: all are renamed into place
    only if the block succeeds, and if one rename fails the ones already renamed are taken
    back, so no final exists without the others (e.g. an ONNX version without its SavedModel).
    """
    with ExitStack() as stack:
        stages = tuple(stack.enter_context(_staging(final)) for final in finals)
        yield stages
        published = []
        try:
            for stage, final in zip(stages, finals, strict=True):
                os.rename(stage, final)
                published.append(final)
        except BaseException:
            for final in published:
                shutil.rmtree(final, ignore_errors=True)
            raise


@contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A temporary sibling of final, removed on the way out (renamed or not)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        raise FileExistsError(f"{final}: version already exists; versions are never overwritten")
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging-", dir=final.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def export_model(model: keras.Model, export_dir: str | Path, model_name: str, multiple: int,
                 opset: int = 17, metadata: dict | None = None,
                 extra_assets: dict[str, str] | None = None,
                 before_publish: Callable[[Path, Path, int], dict] | None = None,
                 version: int | None = None) -> dict:
    """Export a new version: exports/serving/<name>/<v>/ and exports/onnx/<name>/<v>/model.onnx.

    Args:
        version: the version the caller already named (e.g. in the model card); it must still
            be the next free one, else nothing is written. Default: the next free one.
        before_publish: called with the staged SavedModel directory, ONNX file and version
            before they are renamed into place; it may add files (e.g. warm-up requests) and
            raises to publish nothing. What it returns is merged into the result.

    Returns:
        {"version", "saved_model", "onnx"} with absolute paths, plus before_publish's result.
    """
    export_dir = Path(export_dir).resolve()
    serving_base = export_dir / "serving" / model_name
    onnx_base = export_dir / "onnx" / model_name
    free = next_version(serving_base, onnx_base)
    if version is not None and version != free:
        raise ExportError(f"{serving_base}: version {version} was requested but the next free "
                          f"version is {free} (another export ran meanwhile?); nothing written")
    version = free
    metadata = {**(metadata or {}), "version": version, "model_name": model_name,
                "input": INPUT_NAME, "output": OUTPUT_NAME, "bands": list(BANDS),
                "onnx_opset": opset}
    saved_final, onnx_final = serving_base / str(version), onnx_base / str(version)
    with staged_directories(saved_final, onnx_final) as (saved_stage, onnx_stage):
        saved_model = saved_stage / "model"
        write_saved_model(model, saved_model, multiple, metadata, extra_assets)
        onnx_path = write_onnx(saved_model, onnx_stage / "model.onnx", opset, metadata)
        checks = before_publish(saved_model, onnx_path, version) if before_publish else {}
        for item in saved_model.iterdir():
            item.rename(saved_stage / item.name)
        saved_model.rmdir()
    return {"version": version, "saved_model": str(saved_final),
            "onnx": str(onnx_final / "model.onnx"), **checks}
