"""TF Serving's gRPC API: PredictionService (Predict, GetModelMetadata) and ModelService
(GetModelStatus), from the tensorflow-serving-api protos. The response builders are shared with
the REST API, which renders the same protos as JSON.
"""

from __future__ import annotations

import logging

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from tailseg.errors import ServingRequestError
from tailseg.export import OUTPUT_NAME, SIGNATURE
from tailseg.serving.protocol import to_tensor_proto
from tailseg.serving.registry import ModelRegistry

logger = logging.getLogger(__name__)


def spec_choice(model_spec) -> tuple[int | None, str | None]:
    """(version, label) of a ModelSpec; both None means the latest version."""
    match model_spec.WhichOneof("version_choice"):
        case "version":
            return model_spec.version.value, None
        case "version_label":
            return None, model_spec.version_label
    return None, None


def status_response(registry: ModelRegistry, name: str, version: int | None = None,
                    label: str | None = None) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for number, state in registry.status(name, version, label):
        entry = response.model_version_status.add(
            version=number, state=get_model_status_pb2.ModelVersionStatus.State.Value(state.state))
        entry.status.SetInParent()  # TF Serving always reports a status (OK by default)
        if state.error:
            entry.status.error_code = 13  # INTERNAL: the version failed to load
            entry.status.error_message = state.error
    return response


def metadata_response(registry: ModelRegistry, name: str, version: int | None = None,
                      label: str | None = None,
                      fields=("signature_def",)) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not fields:
        raise ServingRequestError("GetModelMetadataRequest must specify at least one "
                                  "metadata_field")
    unknown = sorted(set(fields) - {"signature_def"})
    if unknown:
        raise ServingRequestError(f"Metadata field {unknown[0]} is not supported")
    loaded = registry.resolve(name, version, label)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in loaded.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = name
    response.model_spec.version.value = loaded.version
    response.metadata["signature_def"].Pack(signature_map)
    return response


def _abort_on_error(context: grpc.ServicerContext, call):
    try:
        return call()
    except ServingRequestError as error:
        problem = (getattr(grpc.StatusCode, error.code), str(error))
    except Exception as error:  # report, do not crash the worker
        logger.exception("gRPC request failed")
        problem = (grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
    context.abort(*problem)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def Predict(self, request, context):
        return _abort_on_error(context, lambda: self._predict(request))

    def _predict(self, request) -> predict_pb2.PredictResponse:
        unknown = sorted(set(request.output_filter) - {OUTPUT_NAME})
        if unknown:
            raise ServingRequestError(f"output tensor alias not found in signature: {unknown}")
        version, label = spec_choice(request.model_spec)
        loaded = self.registry.resolve(request.model_spec.name, version, label)
        probability = loaded.predict_request(request)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = loaded.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = request.model_spec.signature_name or SIGNATURE
        response.outputs[OUTPUT_NAME].CopyFrom(to_tensor_proto(probability))
        return response

    def GetModelMetadata(self, request, context):
        version, label = spec_choice(request.model_spec)
        return _abort_on_error(context, lambda: metadata_response(
            self.registry, request.model_spec.name, version, label,
            tuple(request.metadata_field)))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry):
        self.registry = registry

    def GetModelStatus(self, request, context):
        version, label = spec_choice(request.model_spec)
        return _abort_on_error(context, lambda: status_response(
            self.registry, request.model_spec.name, version, label))


def add_servicers(server: grpc.Server, registry: ModelRegistry) -> None:
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(registry), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(registry), server)
