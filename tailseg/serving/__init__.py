"""TF Serving compatibility: export extras, a TF Serving-compatible local server, clients.

Modules: warmup (warm-up request files), model_config (models.config), parity (TF vs ONNX
Runtime), infra_validate (load and query an export in a fresh process), package
(export_for_serving), protocol (tensor and JSON codecs), registry (loaded versions), rest and
grpc_api (the two APIs), server (the `tailseg serve` process), client (REST and gRPC clients).
Nothing is imported here, so `import tailseg.serving.client` stays light.
"""
