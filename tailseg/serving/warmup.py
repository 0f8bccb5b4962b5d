"""TF Serving warm-up requests: assets.extra/tf_serving_warmup_requests.

The file is a TFRecord of PredictionLog protos (saved_model_warmup.md); TF Serving replays it
before marking a version AVAILABLE, so the first real request does not pay for graph tracing.
At most 1000 records are allowed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tensorflow.core.framework.types_pb2 import DT_STRING

from tailseg.errors import ModelFormatError
from tailseg.export import BYTES_INPUTS, BYTES_SIGNATURE, INPUT_NAME, SIGNATURE, read_signature_defs
from tailseg.serving.protocol import check_image, raw_images, to_tensor_proto

WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000


def warmup_path(saved_model_dir: str | Path) -> Path:
    return Path(saved_model_dir) / "assets.extra" / WARMUP_FILE


def predict_request(images: np.ndarray, model_name: str, version: int | None = None,
                    label: str | None = None, signature: str = SIGNATURE):
    """A PredictRequest for float32 [N, H, W, 3] images."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    elif label is not None:
        request.model_spec.version_label = label
    images = np.asarray(images, np.float32)
    if signature != BYTES_SIGNATURE:
        request.inputs[INPUT_NAME].CopyFrom(to_tensor_proto(images))
        return request
    count, height, width, _ = images.shape
    raw, height_name, width_name = BYTES_INPUTS
    strings = request.inputs[raw]
    strings.dtype = DT_STRING
    strings.tensor_shape.dim.add(size=count)
    strings.string_val.extend(raw_images(images))
    request.inputs[height_name].CopyFrom(to_tensor_proto(np.full(count, height, np.int32)))
    request.inputs[width_name].CopyFrom(to_tensor_proto(np.full(count, width, np.int32)))
    return request


def write_warmup_file(saved_model_dir: str | Path, images: np.ndarray, model_name: str,
                      max_records: int = 4) -> Path:
    """Write one batch-1 request per image (the first max_records images), and one more
    through "serving_bytes" when the SavedModel has that signature, so a broken bytes graph
    fails the load instead of the first request.

    Returns:
        The path of the written file.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    images = check_image(np.asarray(images, np.float32), "sample_images")
    if not 1 <= max_records <= MAX_WARMUP_RECORDS:
        raise ValueError(f"max_records must be in 1..{MAX_WARMUP_RECORDS}, got {max_records}")
    requests = [predict_request(image[None], model_name) for image in images[:max_records]]
    if BYTES_SIGNATURE in read_signature_defs(Path(saved_model_dir)) and \
            len(requests) < MAX_WARMUP_RECORDS:
        requests.append(predict_request(images[:1], model_name, signature=BYTES_SIGNATURE))
    path = warmup_path(saved_model_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(saved_model_dir: str | Path) -> list:
    """The PredictRequests of a version's warm-up file ([] when it has none).

    Raises:
        ModelFormatError: the file is not a TFRecord of PredictionLog or has too many records.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = warmup_path(saved_model_dir)
    if not path.is_file():
        return []
    requests = []
    try:
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            log = prediction_log_pb2.PredictionLog.FromString(record)
            if log.WhichOneof("log_type") != "predict_log":
                raise ModelFormatError(f"{path}: only predict_log warm-up records are supported")
            requests.append(log.predict_log.request)
    except (tf.errors.DataLossError, ValueError) as error:
        raise ModelFormatError(f"{path}: not a TFRecord of PredictionLog ({error})") from error
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ModelFormatError(f"{path}: {len(requests)} warm-up records; TF Serving allows "
                               f"at most {MAX_WARMUP_RECORDS}")
    return requests
