"""Infrastructure as code, checked offline: kustomize overlays rendered and schema-validated,
the serving hardening, the ZenML stack files, the cluster overlays parsed by ZenML's own
settings classes, stack registration in an isolated ZenML store, and the accelerator set-up."""

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tailseg.config import load_run_yaml
from tailseg.errors import StackConfigError
from tailseg.stacks import load_stack, load_stacks, merge_run_configs, overlay_orchestrator

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ["staging", "production"]
K8S_VERSION = "1.32.0"
GPU_STEPS = {"hyperparameter_tuner", "model_trainer"}
SERVING_TAG = "2.20.0"


KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) not on PATH")


def kustomize(overlay: str) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(ROOT / "infra/k8s/overlays" / overlay)],
                            capture_output=True, text=True, timeout=60, check=True)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    if KUBECTL is None:
        pytest.skip("kubectl (with kustomize) not on PATH")
    return request.param, kustomize(request.param)


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    return {doc["kind"]: doc for doc in docs}


# --- Kubernetes manifests ----------------------------------------------------------------------

def test_every_rendered_object_validates_strictly(rendered):
    import kubernetes_validate

    name, docs = rendered
    assert {"Namespace", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Deployment",
            "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "NetworkPolicy"} <= set(_by_kind(docs))
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == f"tailseg-{name}"


def test_validator_is_strict_enough_to_catch_typos(rendered):
    import kubernetes_validate

    deployment = copy.deepcopy(_by_kind(rendered[1])["Deployment"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = container["securityContext"].pop(
        "readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_model_server_is_hardened_and_probed(rendered):
    kinds = _by_kind(rendered[1])
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"tensorflow/serving:{SERVING_TAG}"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    # Ready only once a version is AVAILABLE (metadata needs a loaded servable).
    assert container["readinessProbe"]["httpGet"]["path"] == "/v1/models/tailseg/metadata"
    assert container["livenessProbe"]["httpGet"]["path"] == "/monitoring/prometheus/metrics"
    assert {p["containerPort"] for p in container["ports"]} == {8500, 8501}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/models"]["readOnly"] and mounts["/etc/tfserving"]["readOnly"]
    assert "/tmp" in mounts  # the only writable path, an emptyDir
    flags = dict(arg.split("=", 1) for arg in container["args"])
    assert flags["--model_config_file"] == "/etc/tfserving/models.config"
    assert flags["--batching_parameters_file"] == "/etc/tfserving/batching.config"
    assert flags["--monitoring_config_file"] == "/etc/tfserving/monitoring.config"
    service_ports = {p["name"]: p["port"] for p in kinds["Service"]["spec"]["ports"]}
    assert service_ports == {"grpc": 8500, "http": 8501}
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    selector = kinds["Deployment"]["spec"]["selector"]["matchLabels"]
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):
        spec = kinds[kind]["spec"]
        labels = (spec.get("selector") or spec["podSelector"])["matchLabels"]
        assert labels.items() <= selector.items()


@needs_kubectl
def test_production_keeps_capacity_during_disruptions():
    kinds = _by_kind(kustomize("production"))
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == 2
    assert kinds["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 3
    namespace_labels = kinds["Namespace"]["metadata"]["labels"]
    assert namespace_labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_serving_config_parses_and_points_at_the_export_layout(rendered):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config_map = _by_kind(rendered[1])["ConfigMap"]["data"]
    assert {"models.config", "batching.config", "monitoring.config"} <= set(config_map)
    server_config = text_format.Parse(config_map["models.config"],
                                      model_server_config_pb2.ModelServerConfig())
    (model,) = server_config.model_config_list.config
    overlay = load_run_yaml(ROOT / "zenml.k8s.yaml")
    export_dir = overlay["parameters"]["config"]["export"]["export_dir"]
    # export_model writes <export_dir>/serving/<model_name>/<version>/; the claim is at /models.
    assert model.name == "tailseg" and model.base_path == f"{export_dir}/serving/tailseg"
    assert model.model_platform == "tensorflow"
    assert "prometheus_config" in config_map["monitoring.config"]
    assert "max_batch_size" in config_map["batching.config"]


def test_serving_image_is_pinned_no_newer_than_training_tensorflow():
    import tensorflow as tf

    serving = tuple(int(x) for x in SERVING_TAG.split(".")[:2])
    training = tuple(int(x) for x in tf.__version__.split(".")[:2])
    # TF Serving must not be older than the training TF by more than one minor (op skew).
    assert serving <= training and training[1] - serving[1] <= 1 and serving[0] == training[0]


# --- ZenML stacks ------------------------------------------------------------------------------

def test_stack_files_load_and_name_their_components():
    stacks = load_stacks(environ={})
    assert set(stacks) == {"local", "kubernetes", "kubeflow"}
    assert stacks["local"].stack_name == "default" and not stacks["local"].is_remote
    expected = {"kubernetes": ("kubernetes", "s3"), "kubeflow": ("kubeflow", "gcp")}
    for name, (orchestrator, store) in expected.items():
        stack = stacks[name]
        assert stack.orchestrator_flavor == orchestrator
        assert stack.component("artifact_store").flavor == store
        assert stack.component("container_registry") and stack.component("image_builder")


def test_stack_configurations_validate_with_zenml_flavors():
    from zenml.stack.flavor_registry import FlavorRegistry

    registry = FlavorRegistry()
    flavors = {(f().type.value, f().name): f() for f in
               registry.builtin_flavors + registry.integration_flavors}
    for stack in load_stacks(environ={}).values():
        for kind, (component,) in stack.components.items():
            flavor = flavors[(kind, component.flavor)]
            flavor.config_class.model_validate(component.configuration)


def test_stack_environment_substitution_and_remote_rules(tmp_path):
    stack = load_stack(ROOT / "infra/zenml/kubernetes.yaml", {"TAILSEG_BUCKET": "mine"})
    assert stack.component("artifact_store").configuration["path"] == "s3://mine/zenml"
    broken = yaml.safe_load((ROOT / "infra/zenml/kubernetes.yaml").read_text())
    broken["components"]["artifact_store"][0]["configuration"]["path"] = "/home/me/artifacts"
    del broken["components"]["image_builder"]
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(StackConfigError, match="is not remote.*no image_builder"):
        load_stack(path, {})
    path.write_text("stack_name: x\ncomponents:\n  orchestrator:\n    - name: o\n"
                    "      flavor: local\n      configuration:\n        context: ${UNSET_VAR}\n")
    with pytest.raises(StackConfigError, match="UNSET_VAR is not set and has no default"):
        load_stack(path, {})


@pytest.mark.slow  # about 65 s: five CLI processes each start ZenML
def test_stack_register_in_an_isolated_zenml_store(tmp_path):
    env = os.environ | {"ZENML_CONFIG_PATH": str(tmp_path / "config"),
                        "ZENML_LOCAL_STORES_PATH": str(tmp_path / "stores"),
                        "ZENML_ANALYTICS_OPT_IN": "false", "TAILSEG_BUCKET": "test-bucket"}

    def tailseg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tailseg.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=240)

    first = tailseg("stack", "register", "local", "kubernetes", "--activate")
    assert first.returncode == 0, first.stderr
    assert "registered stack 'tailseg-k8s'" in first.stdout
    assert tailseg("stack", "register", "kubernetes").returncode == 0  # idempotent
    check = subprocess.run(
        [sys.executable, "-c", "from zenml.client import Client; c = Client(); "
         "s = c.active_stack_model; print(s.name, sorted((k.value, v[0].flavor_name) for k, v in "
         "s.components.items()), s.components['artifact_store'][0].configuration['path'])"],
        env=env, capture_output=True, text=True, timeout=120)
    assert check.stdout.split()[0] == "tailseg-k8s", check.stderr
    assert "('orchestrator', 'kubernetes')" in check.stdout
    assert "s3://test-bucket/zenml" in check.stdout
    scheduled = tailseg("schedule", "--config", "zenml.yaml", "--overlay", "zenml.k8s.yaml")
    assert scheduled.returncode == 0 and '"cron": "0 3 * * 1"' in scheduled.stdout
    assert tailseg("stack", "register", "local", "--activate").returncode == 0
    refused = tailseg("schedule", "--config", "zenml.yaml", "--overlay", "zenml.k8s.yaml")
    assert refused.returncode == 2 and "cannot run pipelines on a schedule" in refused.stderr


# --- Cluster run configuration -----------------------------------------------------------------

def _merged(overlay: str) -> dict:
    return merge_run_configs(load_run_yaml(ROOT / "zenml.yaml"), load_run_yaml(ROOT / overlay))


def test_k8s_overlay_compiles_to_gpu_pods_schedule_and_data_hash_cache():
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
    from zenml.integrations.kubernetes.flavors import KubernetesOrchestratorSettings
    from zenml.utils import source_utils

    from tailseg.config import parse_config
    from tailseg.schedule import dataset_cache_key, parse_cron

    merged = _merged("zenml.k8s.yaml")
    assert overlay_orchestrator(load_run_yaml(ROOT / "zenml.k8s.yaml")) == "kubernetes"
    run = PipelineRunConfiguration.model_validate(merged)
    parse_config(merged["parameters"]["config"], "merged zenml.k8s.yaml")
    parse_cron(run.schedule.cron_expression, "kubernetes")
    assert run.enable_cache is True
    pipeline_settings = KubernetesOrchestratorSettings.model_validate(
        run.settings["orchestrator.kubernetes"].model_dump(exclude_unset=True))
    assert pipeline_settings.concurrency_policy == "Forbid"
    assert "nvidia.com/gpu" not in str(pipeline_settings.pod_settings.resources)
    # The orchestrator pod evaluates the cache function: it must see the chips.
    orchestrator_pod = pipeline_settings.orchestrator_pod_settings
    assert {"name": "TAILSEG_DATA_DIR", "value": "/data/tailings-br"} in orchestrator_pod.env
    assert orchestrator_pod.volume_mounts[0]["mountPath"] == "/data"
    assert merged["environment"]["TAILSEG_DATA_DIR"] == "/data/tailings-br"
    for name in GPU_STEPS:
        step = run.steps[name]
        assert "resources" not in step.settings  # ignored by this orchestrator; dropped
        settings = KubernetesOrchestratorSettings.model_validate(
            step.settings["orchestrator.kubernetes"].model_dump(exclude_unset=True))
        pod = settings.pod_settings
        assert pod.resources["limits"]["nvidia.com/gpu"] == "1"
        assert pod.resources["requests"]["nvidia.com/gpu"] == "1"
        assert pod.node_selectors == {"nvidia.com/gpu.present": "true"}
        assert pod.tolerations[0]["key"] == "nvidia.com/gpu"
        assert {m["mountPath"] for m in pod.volume_mounts} == {"/data", "/models"}
    for name in ("dataset_validator", "data_splitter"):
        function = source_utils.load(run.steps[name].cache_policy.cache_func)
        assert function is dataset_cache_key
    docker = run.settings["docker"]
    assert docker.parent_image == "tensorflow/tensorflow:2.21.0-gpu"


def test_pipeline_has_the_steps_the_overlays_configure():
    source = (ROOT / "pipelines" / "training.py").read_text()
    for overlay in ("zenml.k8s.yaml", "zenml.kubeflow.yaml"):
        for step in load_run_yaml(ROOT / overlay)["steps"]:
            assert f"{step}(" in source, f"{overlay} configures unknown step {step}"


def test_kubeflow_overlay_requests_gpus_the_kfp_way():
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
    from zenml.integrations.kubernetes.pod_settings import KubernetesPodSettings

    from tailseg.schedule import parse_cron

    run = PipelineRunConfiguration.model_validate(_merged("zenml.kubeflow.yaml"))
    parse_cron(run.schedule.cron_expression, "kubeflow")
    for name in GPU_STEPS:
        settings = run.steps[name].settings
        assert settings["resources"].gpu_count == 1
        pod = KubernetesPodSettings.model_validate(
            settings["orchestrator.kubeflow"].model_dump(exclude_unset=True)["pod_settings"])
        assert set(pod.model_fields_set) == {"node_selectors"}  # the only field KFP 2 applies
        assert "accelerator" in pod.node_selectors


def test_image_requirements_export_matches_pyproject():
    import tomllib

    result = subprocess.run([sys.executable, str(ROOT / "infra/docker/export_requirements.py"),
                             str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                            check=True)
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert result.stdout.splitlines() == expected
    assert "tensorflow==2.21.0" in expected


# --- Accelerators ------------------------------------------------------------------------------

def test_cpu_fallback_and_forced_mixed_precision():
    import keras
    import numpy as np

    from tailseg.accelerate import configure_precision, plan_acceleration
    from tailseg.config import ModelConfig
    from tailseg.model import build_unet

    try:
        plan = plan_acceleration("auto")
        assert plan.n_gpus == 0 and plan.policy == "float32" and plan.replicas == 1
        assert plan.global_batch_size(8) == 8
        assert keras.mixed_precision.global_policy().name == "float32"
        assert configure_precision("on", gpus=[]) == "mixed_float16"
        with plan.strategy.scope():
            model = build_unet(ModelConfig(base_filters=2, depth=2, dropout=0),
                               np.full(3, 0.1), np.full(3, 0.05))
        output = model(np.full((1, 16, 16, 3), 0.1, dtype="float32"))
        assert model.layers[-1].compute_dtype == "float32" and output.dtype.name == "float32"
        assert any(layer.compute_dtype == "float16" for layer in model.layers)
        with pytest.raises(ValueError, match="mixed precision must be"):
            configure_precision("maybe")
    finally:
        keras.mixed_precision.set_global_policy("float32")
