"""TF Serving's gRPC API: PredictionService (Predict, GetModelMetadata) and ModelService
(GetModelStatus, HandleReloadConfigRequest), from the tensorflow-serving-api protos. The
response builders and the prediction path (admission control, deadlines, metrics) are shared
with the REST API, which renders the same protos as JSON.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
import numpy as np
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tailseg.errors import ConfigError, ServingRequestError
from tailseg.export import OUTPUT_NAME, SIGNATURE
from tailseg.serving.batching import Batcher
from tailseg.serving.labels import VersionLabelError
from tailseg.serving.limits import Admission, check_alive
from tailseg.serving.metrics import ServingMetrics
from tailseg.serving.model_config import sources_from_proto
from tailseg.serving.protocol import to_tensor_proto
from tailseg.serving.registry import ModelRegistry
from tailseg.serving.version import LoadedVersion

logger = logging.getLogger(__name__)
# TF Serving sets grpc::ServerBuilder::SetMaxMessageSize(kint32max) (model_servers/server.cc).
GRPC_MAX_MESSAGE_BYTES = 2**31 - 1


@dataclass
class ServingRuntime:
    """What both APIs share: the models, the pixel budget and the metrics (None: off)."""

    registry: ModelRegistry
    admission: Admission | None = None
    metrics: ServingMetrics | None = None
    batcher: Batcher | None = None  # --enable_batching (see tailseg.serving.batching)

    def predict(self, loaded: LoadedVersion, images: np.ndarray, deadline: float | None = None,
                alive: Callable[[], bool] | None = None) -> np.ndarray:
        """Run the model on checked images: batched with concurrent requests when batching is
        on (the batch is admitted as a whole), else alone once the pixel budget has room.

        A request larger than the whole budget skips the batch queue and is refused at once."""
        check_alive(deadline, alive)
        too_large = self.admission is not None and \
            int(np.prod(images.shape[:3])) > self.admission.max_pixels
        if self.batcher is not None and not too_large:
            return self.batcher.predict(loaded, images, deadline, alive)
        return self.run_unbatched(loaded, images, deadline, alive)

    def run_unbatched(self, loaded: LoadedVersion, images: np.ndarray,
                      deadline: float | None = None,
                      alive: Callable[[], bool] | None = None) -> np.ndarray:
        """Wait for room in the pixel budget, then run the model on these images."""
        if self.admission is None:
            return loaded.predict(images, deadline, alive)
        with self.admission.admit(int(np.prod(images.shape[:3])), deadline, alive):
            return loaded.predict(images, deadline, alive)

    def record(self, model_name: str, api: str, entrypoint: str, status: str,
               started: float) -> None:
        if self.metrics is not None:
            self.metrics.observe_request(model_name, api, entrypoint, status,
                                         time.perf_counter() - started)


def spec_choice(model_spec) -> tuple[int | None, str | None]:
    """(version, label) of a ModelSpec; both None means the latest version."""
    match model_spec.WhichOneof("version_choice"):
        case "version":
            return model_spec.version.value, None
        case "version_label":
            return None, model_spec.version_label
    return None, None


def require_spec(request) -> None:
    """TF Serving's first check of every request (predict_impl.cc, get_model_status_impl.cc,
    get_model_metadata_impl.cc), then ServerCore::ServableRequestFromModelSpec's."""
    if not request.HasField("model_spec"):
        raise ServingRequestError("Missing ModelSpec")


def require_name(model_spec) -> None:
    """ServerCore::ServableRequestFromModelSpec: every servable lookup needs a name (the
    status lookup does not go through it: an empty name is just a model with no versions)."""
    if not model_spec.name:
        raise ServingRequestError("ModelSpec has no name specified.")


def status_response(registry: ModelRegistry, name: str, version: int | None = None
                    ) -> get_model_status_pb2.GetModelStatusResponse:
    """The model's version states; like get_model_status_impl.cc it takes no version label."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for number, state in registry.status(name, version):
        entry = response.model_version_status.add(
            version=number, state=get_model_status_pb2.ModelVersionStatus.State.Value(state.state))
        entry.status.SetInParent()  # TF Serving always reports a status (OK by default)
        if state.error:  # the version failed to load: its last error, as TF Serving reports it
            entry.status.error_code = grpc.StatusCode[state.error_code].value[0]
            entry.status.error_message = state.error
    return response


def check_metadata_fields(fields) -> None:
    """get_model_metadata_impl.cc's request check, made before the model is looked up."""
    if not fields:
        raise ServingRequestError("GetModelMetadataRequest must specify at least one "
                                  "metadata_field")
    unknown = sorted(set(fields) - {"signature_def"})
    if unknown:
        raise ServingRequestError(f"Metadata field {unknown[0]} is not supported")


def metadata_response(registry: ModelRegistry, name: str, version: int | None = None,
                      label: str | None = None,
                      fields=("signature_def",)) -> get_model_metadata_pb2.GetModelMetadataResponse:
    check_metadata_fields(fields)
    loaded = registry.resolve(name, version, label)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in loaded.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = name
    response.model_spec.version.value = loaded.version
    response.metadata["signature_def"].Pack(signature_map)
    return response


def _abort_on_error(context: grpc.ServicerContext, call, runtime: ServingRuntime | None = None,
                    model_name: str = "", entrypoint: str = ""):
    started, status = time.perf_counter(), "OK"
    try:
        return call()
    except ServingRequestError as error:
        status = error.code
        problem = (getattr(grpc.StatusCode, error.code), str(error))
    except Exception as error:  # report, do not crash the worker
        logger.exception("gRPC request failed")
        status = "INTERNAL"
        problem = (grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
    finally:
        if runtime is not None:
            runtime.record(model_name, "grpc", entrypoint, status, started)
    context.abort(*problem)


def check_output_filter(aliases) -> None:
    """predict_util.cc, after the inputs are read: each alias must be an output of the
    signature, and none may repeat."""
    seen = set()
    for alias in aliases:
        if alias != OUTPUT_NAME:
            raise ServingRequestError(f"output tensor alias not found in signature: {alias} "
                                      f"Outputs expected to be in the set {{{OUTPUT_NAME}}}.")
        if alias in seen:
            raise ServingRequestError(f"duplicate output tensor alias: {alias}")
        seen.add(alias)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, runtime: ServingRuntime):
        self.runtime = runtime
        self.registry = runtime.registry

    def Predict(self, request, context):
        return _abort_on_error(context, lambda: self._predict(request, context), self.runtime,
                               request.model_spec.name, "Predict")

    def _predict(self, request, context) -> predict_pb2.PredictResponse:
        require_spec(request)
        require_name(request.model_spec)
        remaining = context.time_remaining()  # None without a client deadline
        deadline = None if remaining is None else time.monotonic() + remaining
        version, label = spec_choice(request.model_spec)
        loaded = self.registry.resolve(request.model_spec.name, version, label)
        signature = request.model_spec.signature_name or SIGNATURE
        if signature not in loaded.signature_defs:  # predict_util.cc's words and code
            raise ServingRequestError(f'Serving signature key "{signature}" not found.',
                                      "FAILED_PRECONDITION")
        images = loaded.request_images(request)
        check_output_filter(request.output_filter)
        probability = self.runtime.predict(loaded.serving(request.model_spec.signature_name),
                                           images, deadline, context.is_active)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = request.model_spec.signature_name or SIGNATURE
        response.outputs[OUTPUT_NAME].CopyFrom(to_tensor_proto(probability))
        return response

    def GetModelMetadata(self, request, context):
        version, label = spec_choice(request.model_spec)

        def answer():
            require_spec(request)
            check_metadata_fields(tuple(request.metadata_field))
            require_name(request.model_spec)
            return metadata_response(self.registry, request.model_spec.name, version, label,
                                     tuple(request.metadata_field))

        return _abort_on_error(context, answer, self.runtime, request.model_spec.name,
                               "GetModelMetadata")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, runtime: ServingRuntime):
        self.runtime = runtime
        self.registry = runtime.registry

    def GetModelStatus(self, request, context):
        version, _ = spec_choice(request.model_spec)  # a version label is not read

        def answer():
            require_spec(request)
            return status_response(self.registry, request.model_spec.name, version)

        return _abort_on_error(context, answer, self.runtime, request.model_spec.name,
                               "GetModelStatus")

    def HandleReloadConfigRequest(self, request, context):
        """Replace the served models (model_service_impl.cc): the new config's labels are
        checked first; a refused config changes nothing and its status is the RPC's status.

        Base paths must be absolute unless the server has --model_config_list_root_dir, as in
        TF Serving. A config file polled for changes replaces this config when the file
        changes next.
        """
        origin = "HandleReloadConfigRequest"
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise ConfigError("ServerModelConfig type not supported by "
                                  "HandleReloadConfigRequest. Only ModelConfigList is currently "
                                  "supported")
            self.registry.reload_config(sources_from_proto(request.config, origin,
                                                   self.registry.config_root),
                                        origin)
        except ConfigError as error:
            code = grpc.StatusCode.FAILED_PRECONDITION if isinstance(error, VersionLabelError) \
                else grpc.StatusCode.INVALID_ARGUMENT
            logger.error("ReloadConfig failed: %s", error)
            context.abort(code, str(error))
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_code = 0  # OK
        return response


def add_servicers(server: grpc.Server, runtime: ServingRuntime) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(runtime), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(runtime), server)
