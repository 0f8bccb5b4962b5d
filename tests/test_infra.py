"""Infrastructure as code, checked offline: kustomize overlays rendered and schema-validated,
the serving hardening and start-up rules, model delivery, the pipeline bootstrap (RBAC,
Kaniko, credentials, extras), the ZenML stack files, the cluster overlays parsed by ZenML's own
settings classes and compiler, stack registration in an isolated ZenML store, the accelerator
set-up, and the commands of docs/kubernetes.md."""

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
from tailseg.runtime import TENSORFLOW_ENV
from tailseg.stacks import load_stack, load_stacks, merge_run_configs, overlay_orchestrator

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ["staging", "production"]
K8S_VERSION = "1.32.0"
GPU_STEPS = {"hyperparameter_tuner", "model_trainer"}
SERVING_TAG = "2.20.0"
CLUSTER_SCOPED = {"Namespace", "PersistentVolume"}


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
        if doc["kind"] not in CLUSTER_SCOPED:
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
    env = {variable["name"]: variable["value"] for variable in container["env"]}
    assert TENSORFLOW_ENV.items() <= env.items()  # the allocator, as every tailseg process
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


def selector_matches(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels AND matchExpressions); {} matches all."""
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if not {"In": present and labels.get(key) in (values or []),
                "NotIn": not present or labels[key] not in (values or []),
                "Exists": present, "DoesNotExist": not present}[operator]:
            return False
    return True


def test_network_policy_admits_pods_with_only_the_documented_client_label(rendered):
    # Kustomize's label transformer with includeSelectors (or commonLabels) also writes its
    # labels into spec/ingress/from/podSelector of a NetworkPolicy; a client pod labelled only
    # tailseg.io/serving-client=true, as docs/kubernetes.md says, would then be refused.
    kinds = _by_kind(rendered[1])
    policy = kinds["NetworkPolicy"]["spec"]
    pod_labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert selector_matches(policy["podSelector"], pod_labels)
    client = {"tailseg.io/serving-client": "true"}
    grpc_rules = [rule for rule in policy["ingress"]
                  if any(port["port"] == "grpc" for port in rule.get("ports", []))]
    assert any(selector_matches(peer["podSelector"], client)
               for rule in grpc_rules for peer in rule["from"] if "podSelector" in peer
               and "namespaceSelector" not in peer)
    assert not any(selector_matches(peer["podSelector"], {"app": "other"})
                   for rule in policy["ingress"] for peer in rule["from"] if "podSelector" in peer)
    # Every selector still finds the server's pods.
    assert selector_matches({"matchLabels": kinds["Service"]["spec"]["selector"]}, pod_labels)
    for kind in ("Deployment", "PodDisruptionBudget"):
        assert selector_matches(kinds[kind]["spec"]["selector"], pod_labels)


def test_model_server_waits_for_a_version_then_starts_and_stays_up(rendered, tmp_path):
    # tensorflow_model_server opens no port until the newest version of every model is
    # AVAILABLE (server.cc after ServerCore::Create; `tailseg serve` does the same, tested in
    # test_serving_operations.py): a startup probe would restart a staging server that waits
    # for its first export in a loop. An init container of the same image waits for a version
    # directory under every base path of the models.config; its script is run here.
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    kinds = _by_kind(rendered[1])
    spec = kinds["Deployment"]["spec"]["template"]["spec"]
    (server,), (wait,) = spec["containers"], spec["initContainers"]
    assert wait["image"] == server["image"] and wait["command"] == ["/bin/sh", "-c"]
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    assert {m["name"]: m["mountPath"] for m in wait["volumeMounts"]} == {"models": "/models"}
    assert mounts["models"] == "/models"
    config = text_format.Parse(kinds["ConfigMap"]["data"]["models.config"],
                               model_server_config_pb2.ModelServerConfig())
    script = wait["args"][0]
    for model in config.model_config_list.config:
        assert f"ls -d {model.base_path}/[0-9]*" in script, model.base_path
        local = tmp_path / model.base_path.lstrip("/")
        local.mkdir(parents=True)
        here = script.replace(" /models/", f" {tmp_path}/models/")
        for blocker in (".3.staging", "latest"):  # not versions: it keeps waiting
            (local / blocker).mkdir()
        with pytest.raises(subprocess.TimeoutExpired):
            subprocess.run(["/bin/sh", "-c", here], capture_output=True, timeout=2)
        (local / "3").mkdir()
        assert subprocess.run(["/bin/sh", "-c", here], timeout=10).returncode == 0
    assert server["readinessProbe"]["httpGet"]["path"].startswith("/v1/models/tailseg")
    for probe in ("startupProbe", "livenessProbe"):
        path = server[probe]["httpGet"]["path"]
        assert not path.startswith("/v1/models"), f"{probe} depends on a loaded model"
        assert path == "/monitoring/prometheus/metrics"  # served whatever the model state
    monitoring = kinds["ConfigMap"]["data"]["monitoring.config"]
    assert 'path: "/monitoring/prometheus/metrics"' in monitoring


def test_version_labels_only_with_the_flag_that_allows_them_at_start_up(rendered):
    # server_core.cc (UpdateModelVersionLabelMap): a label must point to an AVAILABLE version
    # unless --allow_version_labels_for_unavailable_models is set (then only labels new to the
    # server, which all are at start-up); otherwise the server exits with FAILED_PRECONDITION
    # "Request to assign label to version N ... not currently available for inference".
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    kinds = _by_kind(rendered[1])
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    flags = dict(arg.split("=", 1) for arg in container["args"])
    config = text_format.Parse(kinds["ConfigMap"]["data"]["models.config"],
                               model_server_config_pb2.ModelServerConfig())
    for model in config.model_config_list.config:
        if not model.version_labels:
            continue
        assert flags.get("--allow_version_labels_for_unavailable_models") == "true", rendered[0]
        policy = model.model_version_policy
        assert policy.WhichOneof("policy_choice") == "specific"
        # A label on a version the policy never loads would never resolve.
        assert set(model.version_labels.values()) <= set(policy.specific.versions)


def _volume_of(pod_spec: dict, mount_path: str) -> tuple[dict, dict]:
    """(volume, mount) of the container mounting mount_path."""
    (mount,) = [m for m in pod_spec["volume_mounts"] if m["mountPath"] == mount_path]
    (volume,) = [v for v in pod_spec["volumes"] if v["name"] == mount["name"]]
    return volume, mount


@needs_kubectl
def test_the_path_the_pipeline_writes_is_the_path_both_stages_serve_from():
    """Model delivery: staging's pipeline exports onto the shared model repository; each
    stage's claim binds (statically) to a volume on that same filesystem, mounted where
    models.config's base_path expects the versions."""
    from zenml.integrations.kubernetes.flavors import KubernetesOrchestratorSettings

    k8s = _merged("zenml.k8s.yaml")
    export_dir = k8s["parameters"]["config"]["export"]["export_dir"]
    pods = KubernetesOrchestratorSettings.model_validate(
        k8s["settings"]["orchestrator.kubernetes"]).pod_settings.model_dump()
    volume, mount = _volume_of(pods, export_dir)
    assert not mount.get("readOnly") and not volume["persistentVolumeClaim"].get("readOnly")
    namespace = load_stack(ROOT / "infra/zenml/kubernetes.yaml", {}).component(
        "orchestrator").configuration["kubernetes_namespace"]
    assert namespace == "tailseg-staging"  # the pipeline mounts staging's claim
    sources = {}
    for overlay in OVERLAYS:
        docs = kustomize(overlay)
        claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
        volumes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolume"}
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        pv = volumes[claim["spec"]["volumeName"]]
        assert pv["spec"]["claimRef"] == {"namespace": f"tailseg-{overlay}",
                                          "name": claim["metadata"]["name"]}
        assert set(claim["spec"]["accessModes"]) <= set(pv["spec"]["accessModes"])
        assert pv["spec"]["storageClassName"] == claim["spec"]["storageClassName"] == ""
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
        sources[overlay] = {k: v for k, v in pv["spec"].items() if k not in
                            {"accessModes", "claimRef", "capacity"}}
        sources[overlay]["nfs"] = {k: v for k, v in pv["spec"]["nfs"].items() if k != "readOnly"}
        # The server mounts the same claim where models.config expects the versions.
        kinds = _by_kind(docs)
        pod = kinds["Deployment"]["spec"]["template"]["spec"]
        served = {v["name"]: v for v in pod["volumes"]}
        (server_mount,) = [m for m in pod["containers"][0]["volumeMounts"]
                           if served[m["name"]].get("persistentVolumeClaim", {}).get(
                               "claimName") == claim["metadata"]["name"]]
        assert server_mount["readOnly"] is True
        assert server_mount["mountPath"] == export_dir
        assert "/models/serving/tailseg" in kinds["ConfigMap"]["data"]["models.config"]
    assert sources["staging"] == sources["production"], "the stages use different filesystems"
    production = kustomize("production")
    (pv,) = [d for d in production if d["kind"] == "PersistentVolume"]
    assert pv["spec"]["accessModes"] == ["ReadOnlyMany"] and pv["spec"]["nfs"]["readOnly"]


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
    expected = {"kubernetes": ("kubernetes", "s3"), "kubeflow": ("kubeflow", "s3")}
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


def test_stack_registration_refuses_keys_the_flavor_does_not_define(tmp_path):
    # model_validate above cannot catch a misspelt key: ZenML's component configs drop
    # unknown keys (extra="ignore") or keep them unused (extra="allow"); see both below.
    from zenml.integrations.kubernetes.flavors import KubernetesOrchestratorConfig
    from zenml.integrations.s3.flavors import S3ArtifactStoreConfig

    from pipelines.cli import check_configuration_keys
    from tailseg.errors import TailsegError

    assert S3ArtifactStoreConfig.model_config["extra"] == "ignore"
    assert KubernetesOrchestratorConfig.model_config["extra"] == "allow"
    stacks = load_stacks(environ={})
    check_configuration_keys(stacks.values())  # the project's stacks: no unknown key
    broken = yaml.safe_load((ROOT / "infra/zenml/kubernetes.yaml").read_text())
    orchestrator = broken["components"]["orchestrator"][0]["configuration"]
    orchestrator["kubernetes_contxt"] = orchestrator.pop("kubernetes_context", "ctx")
    path = tmp_path / "kubernetes.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(TailsegError, match=r"orchestrator .*\(kubernetes\) has unknown "
                                           r"configuration keys \['kubernetes_contxt'\]"):
        check_configuration_keys([load_stack(path, {"TAILSEG_BUCKET": "b"})])


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
        return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=ROOT, env=env,
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


# --- Bootstrap: what the cluster needs before the first run -----------------------------------

PIPELINE_INFRA = ROOT / "infra/k8s/pipeline"


def _secret_templates() -> dict[tuple[str, str], dict]:
    docs = [yaml.safe_load(path.read_text()) for path in (PIPELINE_INFRA / "secrets").glob("*")]
    return {(d["metadata"]["namespace"], d["metadata"]["name"]): d for d in docs}


@needs_kubectl
def test_bootstrap_creates_the_orchestrator_account_zenml_no_longer_creates():
    # KubernetesOrchestrator._get_service_account_name (ZenML 0.98): with service_account_name
    # set, ZenML creates nothing; without it, it creates that account and binds the ClusterRole
    # "edit" in the namespace (kube_utils.create_edit_service_account). Our stack sets the
    # name, so the bootstrap must create what ZenML would have: the same RoleBinding.
    import kubernetes_validate
    from zenml.integrations.kubernetes.manifest_utils import (
        build_role_binding_manifest_for_service_account,
    )

    docs = [d for d in yaml.safe_load_all(subprocess.run(
        [KUBECTL, "kustomize", str(PIPELINE_INFRA)], capture_output=True, text=True,
        check=True).stdout) if d]
    for doc in [*docs, *_secret_templates().values()]:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for name, stack in load_stacks(environ={}).items():
        if name == "local":
            continue
        builder = stack.component("image_builder").configuration
        namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
        assert builder["kubernetes_namespace"] in namespaces  # ZenML will not create it
    orchestrator = load_stack(ROOT / "infra/zenml/kubernetes.yaml", {}).component(
        "orchestrator").configuration
    namespace, account = orchestrator["kubernetes_namespace"], orchestrator["service_account_name"]
    assert any(d["kind"] == "ServiceAccount" and d["metadata"] == {
        **d["metadata"], "name": account, "namespace": namespace} for d in docs)
    expected = build_role_binding_manifest_for_service_account(
        name="zenml-edit", role_name="edit", service_account_name=account, namespace=namespace)
    (binding,) = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["metadata"]["namespace"] == namespace
    assert {k: v for k, v in binding.items() if k != "metadata"} == \
        {k: v for k, v in expected.items() if k != "metadata"}
    # Each run's (or schedule's) ZenML token in a Secret, not in the pod spec in plain text;
    # creating that Secret is within "edit".
    assert orchestrator["pass_zenml_token_as_secret"] is True


def test_kaniko_gets_registry_push_and_artifact_store_read_credentials():
    # Kaniko reads the build context from the artifact store (store_context_in_artifact_store)
    # and pushes to the registry with /kaniko/.docker/config.json; ZenML passes the volumes,
    # mounts and env_from of the image builder's configuration into the Kaniko pod.
    templates = _secret_templates()
    for name, stack in load_stacks(environ={}).items():
        if name == "local":
            continue
        builder = stack.component("image_builder").configuration
        namespace = builder["kubernetes_namespace"]
        assert builder["store_context_in_artifact_store"] is True
        (docker,) = [m for m in builder["volume_mounts"] if m["mountPath"] == "/kaniko/.docker"]
        (volume,) = [v for v in builder["volumes"] if v["name"] == docker["name"]]
        secret = templates[(namespace, volume["secret"]["secretName"])]
        assert secret["type"] == "kubernetes.io/dockerconfigjson"
        assert volume["secret"]["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
        (source,) = builder["env_from"]
        keys = set(templates[(namespace, source["secretRef"]["name"])]["stringData"])
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= keys
        # The pods that run steps read the store through a ZenML secret, not a pod env var.
        store = stack.component("artifact_store").configuration
        assert store["authentication_secret"] == "tailseg-s3"
    for secret in templates.values():  # templates, never real credentials
        text = yaml.safe_dump(secret)
        assert "REPLACE_ME" in text or "BASE64_USER_COLON_TOKEN" in text


@pytest.mark.parametrize(("extra", "stack"), [("kubernetes", "kubernetes"),
                                              ("kubeflow", "kubeflow")])
def test_project_extra_installs_every_zenml_integration_of_its_stack(extra, stack):
    # `zenml integration install <name>` installs Integration.REQUIREMENTS; a flavor whose
    # integration misses one fails to import on the client (stack_component.py: "The `s3`
    # integration ... is not installed"). The extra pins the same requirements.
    import tomllib

    from packaging.requirements import Requirement
    from zenml.integrations.registry import integration_registry

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def pins(names: list[str]) -> dict[str, Requirement]:
        found = {}
        for text in names:
            requirement = Requirement(text)
            if requirement.name == "tailseg":
                for nested in requirement.extras:
                    found |= pins(extras[nested])
            else:
                found[requirement.name.lower()] = requirement
        return found

    available = pins(project["dependencies"] + extras[extra])
    owners = {}
    for integration_name, integration in integration_registry.integrations.items():
        for flavor in integration.flavors():
            owners[(flavor().type.value, flavor().name)] = integration_name
    needed = {owners[(kind, c.flavor)] for kind, (c,) in load_stacks(environ={})[
        stack].components.items() if (kind, c.flavor) in owners}
    assert {stack, "s3", "kaniko"} <= needed
    for integration_name in needed:
        for text in integration_registry.integrations[integration_name].get_requirements():
            wanted = Requirement(text)
            assert wanted.name.lower() in available, f"{extra}: {integration_name} needs {text}"
            pin = available[wanted.name.lower()]
            pinned = [s.version for s in pin.specifier if s.operator == "=="]
            if pinned:
                assert wanted.specifier.contains(pinned[0]), f"{pin} does not satisfy {text}"


@pytest.mark.slow  # about 1 minute, needs the package index: resolves the extras with pip
@pytest.mark.parametrize("extra", ["kubernetes", "kubeflow"])
def test_extras_resolve_with_the_pinned_dependencies(extra, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report",
         str(tmp_path / "report.json"), "-e", f"{ROOT}[{extra}]"],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


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
    for name in DATASET_KEYED_STEPS:
        function = source_utils.load(run.steps[name].cache_policy.cache_func)
        assert function is dataset_cache_key
    docker = run.settings["docker"]
    assert docker.parent_image == "tensorflow/tensorflow:2.21.0-gpu"


def _pipeline_steps() -> set[str]:
    """The step functions the training pipeline calls (those imported from steps/)."""
    import ast

    tree = ast.parse((ROOT / "pipelines" / "training.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("steps.") for alias in node.names}
    return {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name) and node.func.id in imported}


# Steps that compute only from the chips: cacheable, keyed on the dataset's content.
DATASET_KEYED_STEPS = {"data_splitter", "hyperparameter_tuner", "model_trainer",
                       "model_evaluator"}
# Steps whose effect or input lies outside the run: never served from the cache.
SIDE_EFFECT_STEPS = {"dataset_validator", "model_gate", "model_exporter", "model_promoter"}


@pytest.mark.parametrize("overlay", ["zenml.k8s.yaml", "zenml.kubeflow.yaml"])
def test_caching_is_set_per_step_never_for_the_whole_run(overlay):
    # ZenML 0.98 config/compiler.py (_apply_run_configuration): a run-level enable_cache is
    # applied to every step, overriding @step(enable_cache=False); only a per-step value
    # (steps.<name>.enable_cache, applied later) keeps side-effect steps out of the cache.
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    run = PipelineRunConfiguration.model_validate(_merged(overlay))
    assert run.enable_cache is None, "a run-level enable_cache overrides every step"
    assert DATASET_KEYED_STEPS | SIDE_EFFECT_STEPS == _pipeline_steps()  # every step decided
    for name in DATASET_KEYED_STEPS:
        assert run.steps[name].enable_cache is True, name
        assert run.steps[name].cache_policy.cache_func.attribute == "dataset_cache_key", name
    for name in SIDE_EFFECT_STEPS:
        assert run.steps[name].enable_cache is False, name


@pytest.mark.slow  # about 30 s: compiles the training pipeline (imports TensorFlow)
def test_zenml_compiler_keeps_side_effect_steps_uncached(tmp_path):
    """The rule above, through ZenML's own compiler: with the overlay as written, only the
    dataset-keyed steps are cacheable; a run-level enable_cache: true alone makes every step so."""
    from pipelines.runner import effective_configuration
    from pipelines.training import training

    def compiled(config: dict) -> dict:
        path = tmp_path / "run.yaml"
        path.write_text(yaml.safe_dump(config))
        pipeline = training.with_options(config_path=str(path))
        pipeline.prepare()
        snapshot, schedule, _ = pipeline._compile(config_path=str(path))
        assert schedule.name == "tailseg-weekly-retrain"
        return {name: step.config for name, step in snapshot.step_configurations.items()}

    effective = effective_configuration(ROOT / "zenml.yaml", ROOT / "zenml.k8s.yaml")
    steps = compiled(effective)
    assert {name for name, c in steps.items() if c.enable_cache} == DATASET_KEYED_STEPS
    for name in DATASET_KEYED_STEPS:
        assert steps[name].cache_policy.cache_func.attribute == "dataset_cache_key"
    # The trap: a run-level enable_cache: true (and no per-step value, as before) makes even
    # the @step(enable_cache=False) steps cacheable.
    bare_steps = {name: {k: v for k, v in step.items() if k != "enable_cache"}
                  for name, step in effective["steps"].items()}
    steps = compiled({**effective, "enable_cache": True, "steps": bare_steps})
    assert all(c.enable_cache for c in steps.values())


def test_side_effect_steps_never_come_from_the_cache_whatever_the_run_config_says(tmp_path):
    """The trap above, closed by the runner: a user's run-level enable_cache: true, and even a
    per-step true, compile to uncached side-effect steps while the trainer stays cacheable.
    About 5 s on top of the TensorFlow import: one compilation by ZenML's own compiler."""
    from pipelines.runner import effective_configuration, never_cache_side_effects
    from pipelines.training import training

    effective = effective_configuration(ROOT / "zenml.yaml")
    asked = {**effective, "enable_cache": True,
             "steps": {**effective.get("steps", {}), "model_exporter": {"enable_cache": True}}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(never_cache_side_effects(training, asked)))
    pipeline = training.with_options(config_path=str(path))
    pipeline.prepare()
    snapshot, _, _ = pipeline._compile(config_path=str(path))
    cached = {name: step.config.enable_cache
              for name, step in snapshot.step_configurations.items()}
    assert {name for name, enabled in cached.items() if not enabled} == SIDE_EFFECT_STEPS
    assert cached["model_trainer"] is True


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
        # ZenML passes this value to task.set_accelerator_type together with the gpu_count
        # limit; KFP requests a resource of that name ("nvidia.com/gpu", per kfp's
        # docstring), so a node-label value such as nvidia-tesla-t4 asks for a resource no
        # node has.
        assert pod.node_selectors == {"accelerator": "nvidia.com/gpu"}


# KFP 2's PipelineTask._validate_memory_request_limit (kfp/dsl/pipeline_task.py) re.match()es
# the memory limit against this pattern: a string such as "16Gi"; anything else raises.
KFP_MEMORY = r"^[0-9]+(E|Ei|P|Pi|T|Ti|G|Gi|M|Mi|K|Ki){0,1}$"


def test_kubeflow_memory_limits_are_what_kfp_accepts():
    """ZenML 0.98's kubeflow orchestrator hands ResourceSettings.get_memory(), a float in GB,
    to KFP's task.set_memory_limit; KFP's validator then raises TypeError and the pipeline
    never compiles. So the overlay must not set memory (kfp is not installed here: the rule is
    read from both sources and checked on what ZenML would pass)."""
    import re

    import zenml
    from zenml.config import ResourceSettings
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    source = (Path(zenml.__file__).parent / "integrations/kubeflow/orchestrators"
              / "kubeflow_orchestrator.py").read_text()
    assert "memory_limit = resource_settings.get_memory() or None" in source
    assert "set_memory_limit(\n                memory_limit\n" in source
    run = PipelineRunConfiguration.model_validate(_merged("zenml.kubeflow.yaml"))
    for name, step in run.steps.items():
        resources = (step.settings or {}).get("resources")
        if resources is None:
            continue
        passed = ResourceSettings.model_validate(resources.model_dump()).get_memory()
        if passed is not None:
            assert isinstance(passed, str) and re.match(KFP_MEMORY, passed), \
                f"zenml.kubeflow.yaml step {name}: memory {passed!r} fails KFP's validator"
    with pytest.raises(TypeError):
        re.match(KFP_MEMORY, 16.0)  # what `memory: 16GB` would hand KFP


@pytest.mark.parametrize("overlay", ["zenml.k8s.yaml", "zenml.kubeflow.yaml"])
def test_step_images_run_tensorflow_with_tailsegs_allocator(overlay):
    # The step images run ZenML's entrypoint, not the tailseg CLI that sets the allocator
    # locally, so the images carry it: DockerSettings.environment becomes ENV lines of the
    # image ZenML builds.
    from zenml.config import DockerSettings
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration
    from zenml.utils.pipeline_docker_image_builder import PipelineDockerImageBuilder

    run = PipelineRunConfiguration.model_validate(_merged(overlay))
    docker = DockerSettings.model_validate(run.settings["docker"].model_dump(exclude_unset=True))
    assert TENSORFLOW_ENV.items() <= docker.environment.items()
    dockerfile = PipelineDockerImageBuilder._generate_zenml_pipeline_dockerfile(
        docker.parent_image, docker)
    for key, value in TENSORFLOW_ENV.items():
        assert f"ENV {key}='{value}'" in dockerfile.splitlines()


def test_the_allocator_variable_is_one_tensorflow_core_reads():
    # TF Serving links TensorFlow core's runtime, whose ProcessState reads the variable the
    # deployment sets; a renamed variable would silently do nothing there and here.
    import tensorflow as tf

    framework = next(Path(tf.__file__).parent.glob("libtensorflow_framework.so*"))
    data = framework.read_bytes()
    for key in TENSORFLOW_ENV:
        assert key.encode() in data


def test_kubeflow_paths_exist_in_the_pod_and_exports_persist():
    import inspect

    from zenml.entrypoints.base_entrypoint_configuration import BaseEntrypointConfiguration
    from zenml.utils import code_utils

    from tailseg.config import parse_config

    # ZenML 0.98: the step entrypoint changes to /app, then extracts the code downloaded from
    # the artifact store into ./code and changes into it: the source root is /app/code.
    assert 'os.chdir("/app")' in inspect.getsource(
        BaseEntrypointConfiguration.prepare_code_environment)
    assert 'os.path.abspath("code")' in inspect.getsource(
        code_utils.download_code_from_artifact_store)
    merged = _merged("zenml.kubeflow.yaml")
    docker = merged["settings"]["docker"]
    # Only that route, so the code (and the chips under data/) are always at /app/code.
    assert docker["allow_download_from_artifact_store"] is True
    assert docker["allow_download_from_code_repository"] is False
    assert docker["allow_including_files_in_images"] is False
    config = parse_config(merged["parameters"]["config"], "zenml.kubeflow.yaml")
    data_dir = config.data.data_dir
    assert data_dir.startswith("/app/code/")
    assert (ROOT / data_dir.removeprefix("/app/code/") / "images").is_dir()
    assert merged["environment"]["TAILSEG_DATA_DIR"] == data_dir
    if shutil.which("git") and (ROOT / ".git").exists():
        # ZenML's CodeArchive leaves out what git ignores.
        tracked = subprocess.run(["git", "ls-files", data_dir.removeprefix("/app/code/")],
                                 cwd=ROOT, capture_output=True, text=True).stdout.split()
        assert tracked, "the chips must be in the code archive (tracked, not git-ignored)"
    # No volume in a KFP pod: every version is copied to object storage, through the artifact
    # store's filesystem, which refuses paths outside its root (BaseArtifactStore.
    # _validate_path: "outside of artifact store bounds").
    store = load_stack(ROOT / "infra/zenml/kubeflow.yaml", {}).component("artifact_store")
    assert config.export.repository_uri.startswith(store.configuration["path"] + "/")


def test_image_requirements_export_matches_pyproject():
    import tomllib

    result = subprocess.run([sys.executable, str(ROOT / "infra/docker/export_requirements.py"),
                             str(ROOT / "pyproject.toml")], capture_output=True, text=True,
                            check=True)
    expected = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert result.stdout.splitlines() == expected
    assert "tensorflow==2.21.0" in expected



def _pinned_requirements(extra: str) -> list[str]:
    """The dependencies and the extra's, `tailseg[...]` self-references expanded."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]

    def expand(entries: list[str]) -> list[str]:
        lines = []
        for entry in entries:
            if entry.startswith("tailseg["):
                for nested in entry[len("tailseg["):-1].split(","):
                    lines += expand(extras[nested])
            else:
                lines.append(entry)
        return lines

    return list(dict.fromkeys(expand(project["dependencies"] + extras[extra])))


@pytest.mark.parametrize("extra", ["kubernetes", "kubeflow"])
def test_image_requirements_export_adds_the_extra_pinned(extra):
    # pip install -e .[extra] (test_extras_resolve_with_the_pinned_dependencies) installs the
    # same set; `tailseg[...]` itself would send pip to the index for a tailseg package.
    result = subprocess.run([sys.executable, str(ROOT / "infra/docker/export_requirements.py"),
                             str(ROOT / "pyproject.toml"), extra], capture_output=True,
                            text=True, check=True)
    assert result.stdout.splitlines() == _pinned_requirements(extra)
    assert not any(line.startswith("tailseg") for line in result.stdout.splitlines())
    assert "s3fs==2026.9.0" in result.stdout and "boto3==1.43.117" in result.stdout
    assert ("kfp==2.17.3" in result.stdout) is (extra == "kubeflow")
    unknown = subprocess.run([sys.executable, str(ROOT / "infra/docker/export_requirements.py"),
                              str(ROOT / "pyproject.toml"), "kubeflw"], capture_output=True,
                             text=True)
    assert unknown.returncode != 0 and "no extra 'kubeflw'" in unknown.stderr


@pytest.mark.parametrize(("overlay", "extra"), [("zenml.k8s.yaml", "kubernetes"),
                                                ("zenml.kubeflow.yaml", "kubeflow")])
def test_step_image_requirements_are_pinned_from_any_directory(overlay, extra, tmp_path,
                                                               monkeypatch):
    """ZenML's own PipelineDockerImageBuilder.gather_requirements_files, from the overlay's
    Docker settings as the runner assembles them, run from another directory with no `python`
    on PATH: the pinned dependencies and extra, and none of the stack integrations' unpinned
    requirements (install_stack_requirements, on by default, adds them in a RUN of its own)."""
    from uuid import uuid4

    from zenml.client import Client
    from zenml.config import DockerSettings
    from zenml.enums import StackComponentType
    from zenml.orchestrators import BaseOrchestrator
    from zenml.stack import Stack
    from zenml.utils.pipeline_docker_image_builder import PipelineDockerImageBuilder

    from pipelines.runner import effective_configuration

    effective = effective_configuration(ROOT / "zenml.yaml", ROOT / overlay)
    docker = DockerSettings.model_validate(effective["settings"]["docker"])
    # A stack whose orchestrator brings an unpinned integration requirement (kubernetes's).
    orchestrator = BaseOrchestrator.from_model(Client().create_stack_component(
        f"image-test-{uuid4().hex[:8]}", "kubernetes", StackComponentType.ORCHESTRATOR, {}))
    stack = Stack(uuid4(), "image-test", orchestrator=orchestrator,
                  artifact_store=Client().active_stack.artifact_store)
    assert any(">" in requirement for requirement in stack.requirements())
    (tmp_path / "bin").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no python, no python3
    files = {name: content for name, content, _ in
             PipelineDockerImageBuilder.gather_requirements_files(docker, stack, log=False)}
    assert set(files) == {".zenml_pyproject_requirements"}
    assert files[".zenml_pyproject_requirements"].splitlines() == _pinned_requirements(extra)


def test_docker_paths_resolve_against_the_configuration_folder(tmp_path):
    from pipelines.runner import absolute_docker_settings

    config = {"settings": {"docker": {"pyproject_path": "pyproject.toml",
                                      "pyproject_export_command": ["python", "x.py"]}},
              "steps": {"model_trainer": {"settings": {"docker": {
                  "pyproject_path": "sub/pyproject.toml",
                  "pyproject_export_command": ["python3", "y.py"]}}},
                  "model_gate": {"enable_cache": False}}}
    resolved = absolute_docker_settings(config, tmp_path)
    assert resolved["settings"]["docker"] == {
        "pyproject_path": str(tmp_path / "pyproject.toml"),
        "pyproject_export_command": [sys.executable, "x.py"]}
    step = resolved["steps"]["model_trainer"]["settings"]["docker"]
    assert step["pyproject_path"] == str(tmp_path / "sub" / "pyproject.toml")
    assert step["pyproject_export_command"][0] == sys.executable
    assert resolved["steps"]["model_gate"] == {"enable_cache": False}
    assert absolute_docker_settings({"run_name": "x"}, tmp_path) == {"run_name": "x"}


# --- ZenML keys ----------------------------------------------------------------------------------

MISSPELLED = {  # overlay text -> the key path the error names
    "enable_cahce: false": "enable_cahce (did you mean enable_cache?)",
    "steps:\n  data_splitter:\n    cache_polcy: {cache_func: tailseg.schedule.dataset_cache_key}":
        "steps.data_splitter.cache_polcy (did you mean cache_policy?)",
    "settings:\n  orchestrator.kubernetes:\n    concurency_policy: Forbid":
        "settings.orchestrator.kubernetes.concurency_policy (did you mean concurrency_policy?)",
    "settings:\n  docker:\n    parent_imag: tensorflow/tensorflow:2.21.0-gpu":
        "settings.docker.parent_imag (did you mean parent_image?)",
    "steps:\n  model_trainer:\n    settings:\n      orchestrator.kubernetes:\n"
    "        pod_settings: {node_selector: {a: b}}":
        "steps.model_trainer.settings.orchestrator.kubernetes.pod_settings.node_selector",
    "steps:\n  model_trainer:\n    settings:\n      resources: {gpu_cont: 1}":
        "steps.model_trainer.settings.resources.gpu_cont (did you mean gpu_count?)",
    "settings:\n  orchestrator.kubeflow:\n    user_namespce: x":
        "settings.orchestrator.kubeflow.user_namespce (did you mean user_namespace?)",
    "schedule: {name: w, cron_expression: '0 3 * * 1', end_tme: 2027-01-01T00:00:00}":
        "schedule.end_tme (did you mean end_time?)",
    "settings:\n  orchestrator.kubernets: {}": "settings.orchestrator.kubernets (settings keys:",
}


@pytest.mark.parametrize("text", MISSPELLED)
def test_misspelled_zenml_keys_fail_naming_file_and_key(text, tmp_path):
    # ZenML 0.98 validates every one of these and drops the key (extra="ignore" or "allow").
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    from pipelines.runner import effective_configuration
    from tailseg.errors import ConfigError

    PipelineRunConfiguration.model_validate(yaml.safe_load(text))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(text + "\n")
    with pytest.raises(ConfigError) as error:
        effective_configuration(ROOT / "zenml.yaml", overlay)
    assert str(error.value).startswith(f"{overlay}: unknown ZenML key(s) {MISSPELLED[text]}")
    base = tmp_path / "zenml.yaml"  # the base file is checked as well, and named
    base.write_text((ROOT / "zenml.yaml").read_text() + text + "\n")
    with pytest.raises(ConfigError, match=f"^{base}: unknown ZenML key"):
        effective_configuration(base)


@pytest.mark.parametrize("overlay", [None, "zenml.k8s.yaml", "zenml.kubeflow.yaml"])
def test_the_project_run_files_have_only_zenml_keys(overlay):
    from pipelines.runner import check_zenml_keys, effective_configuration

    for name in ("zenml.yaml", overlay):
        if name:
            check_zenml_keys(load_run_yaml(ROOT / name), name)
    effective_configuration(ROOT / "zenml.yaml", overlay and ROOT / overlay)


def test_schedule_command_names_the_overlay_with_a_misspelled_key(tmp_path, capsys):
    from pipelines.cli import main

    overlay = tmp_path / "zenml.k8s.yaml"
    overlay.write_text((ROOT / "zenml.k8s.yaml").read_text().replace(
        "concurrency_policy:", "concurency_policy:"))
    assert main(["schedule", "--config", str(ROOT / "zenml.yaml"), "--overlay", str(overlay),
                 "--orchestrator", "kubernetes"]) == 2
    assert (f"{overlay}: unknown ZenML key(s) settings.orchestrator.kubernetes."
            "concurency_policy") in capsys.readouterr().err


# --- Accelerators ------------------------------------------------------------------------------

def test_cpu_fallback_and_forced_mixed_precision():
    import keras
    import numpy as np

    from tailseg.accelerate import configure_precision, dtype_policy, plan_acceleration
    from tailseg.config import ModelConfig
    from tailseg.model import build_unet

    try:
        plan = plan_acceleration("auto")
        assert plan.n_gpus == 0 and plan.policy == "float32" and plan.replicas == 1
        assert plan.global_batch_size(8) == 8
        assert keras.mixed_precision.global_policy().name == "float32"
        # A plan only names its policy; dtype_policy applies it to a block and restores the
        # previous one, also after an error (training must not leave the process in float16).
        assert plan_acceleration("on", gpus=[]).policy == "mixed_float16"
        assert keras.mixed_precision.global_policy().name == "float32"
        with pytest.raises(RuntimeError), dtype_policy("mixed_float16"):
            assert keras.mixed_precision.global_policy().name == "mixed_float16"
            raise RuntimeError
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


# --- The walk-through ---------------------------------------------------------------------------

def _doc_commands() -> list[list[str]]:
    """Shell commands of docs/kubernetes.md's ```bash blocks (continuations joined)."""
    import re
    import shlex

    text = (ROOT / "docs/kubernetes.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        pending = ""
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            pending += " " + line
            try:  # a quoted argument may span lines
                words = shlex.split(pending.replace("<", "").replace(">", ""), comments=True)
            except ValueError:
                continue
            pending = ""
            if words:
                commands.append(words)
    return commands


def test_every_command_of_the_walk_through_exists():
    import click
    from zenml.cli.cli import cli as zenml_cli

    from pipelines.cli import build_parser

    commands = _doc_commands()
    seen = {command[0] for command in commands}
    assert {"tailseg", "zenml", "kubectl", "pip"} <= seen
    parser = build_parser()
    for command in commands:
        match command:
            case ["tailseg", *args]:
                parser.parse_args(args)  # SystemExit on an unknown command or option
            case ["zenml", *args]:
                group, names = zenml_cli, [a for a in args if not a.startswith("-")]
                context = click.Context(zenml_cli)
                while isinstance(group, click.Group) and names:
                    group = group.get_command(context, names.pop(0))
                    assert group is not None, f"no such zenml command: {command}"
                options = {opt for param in group.params for opt in param.opts}
                for arg in args:
                    flag = arg.split("=")[0]
                    if flag.startswith("--") and not isinstance(group, click.Group):
                        allows_extra = group.context_settings.get("ignore_unknown_options")
                        assert flag in options or allows_extra, f"{command}: {flag}"
            case ["kubectl", "apply" | "kustomize", *args]:
                path = args[args.index("-k") + 1] if "-k" in args else args[0]
                assert (ROOT / path / "kustomization.yaml").is_file(), command
            case ["pip", "install", "-e", target]:
                extra = target.split("[")[1].rstrip("]\"'")
                import tomllib
                project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                assert extra in project["optional-dependencies"]


def test_overlay_nulls_delete_and_never_reach_zenml_as_values():
    base = {"steps": {"model_trainer": {"settings": {"resources": {"cpu_count": 2}}}},
            "enable_cache": False}
    overlay = {"enable_cache": None,
               "steps": {"model_trainer": {"settings": {"resources": None, "docker": {"x": 1}}},
                         "model_gate": {"settings": {"resources": None}, "enable_cache": False}}}
    merged = merge_run_configs(base, overlay)
    assert merged == {"steps": {"model_trainer": {"settings": {"docker": {"x": 1}}},
                                "model_gate": {"settings": {}, "enable_cache": False}}}
