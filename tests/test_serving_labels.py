"""Version labels in `tailseg serve` follow TF Serving's rule, against real servers on loopback.

server_core.cc (ReloadConfig -> UpdateModelVersionLabelMap) checks a config's labels before any
of its versions loads: a label must point to an AVAILABLE version, so at start-up every label
fails ("Failed to start server"), unless --allow_version_labels_for_unavailable_models is set,
which admits labels new to the server but never moves an existing label to an unavailable
version. A refused reload (HandleReloadConfigRequest or a polled models.config) keeps the
previous config. These tests would have caught the production overlay starting without the flag.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import grpc
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tailseg.cli import build_parser
from tailseg.serving.flags import serve_config_kwargs
from tailseg.serving.model_config import ModelSource, to_proto, write_model_config
from tailseg.serving.process import launch_server
from tailseg.serving.server import ServeConfig, start_server
from tests import test_serving_operations as operations
from tests.test_infra import KUBECTL, ROOT, _by_kind, kustomize
from tests.test_serving import http

version_dir = operations.version_dir  # fixture: a complete version of a tiny exported U-Net
wait_for = operations.wait_for

FLAG = "--allow_version_labels_for_unavailable_models"
# tensorflow_model_server flags in the production Deployment that `tailseg serve` refuses
# (docs/serving.md, "Known limits"); ports are replaced by free ones. --enable_batching and
# --batching_parameters_file are kept: `tailseg serve` implements them (docs/serving.md,
# "Batching"), so the production batching.config must parse.
TF_SERVING_ONLY = {"--enable_model_warmup", "--tensorflow_intra_op_parallelism",
                   "--tensorflow_inter_op_parallelism", "--port", "--rest_api_port"}


def models_dir(tmp_path: Path, version_dir: Path, *versions: int) -> Path:
    base = tmp_path / "models" / "tailseg"
    base.mkdir(parents=True)
    for version in versions:
        shutil.copytree(version_dir, base / str(version))
    return base


def config_of(base: Path, versions: tuple[int, ...] = (), labels: dict | None = None,
              policy: str = "specific") -> list[ModelSource]:
    return [ModelSource("tailseg", base, policy, versions=versions, labels=labels or {})]


def label_version(rest_url: str, label: str) -> tuple[int, str]:
    """(HTTP status, the version or the error) of GET /v1/models/tailseg/labels/LABEL/metadata:
    the metadata request resolves the label (ServerCore::GetServableHandle); the status
    request would not (get_model_status_impl.cc reads no label and lists every version)."""
    status, body = http("GET", f"{rest_url}/v1/models/tailseg/labels/{label}/metadata")
    if status != 200:
        return status, body["error"]
    return status, body["model_spec"]["version"]


def served_versions(rest_url: str) -> list[str]:
    status, body = http("GET", f"{rest_url}/v1/models/tailseg")
    assert status == 200, body
    return sorted(v["version"] for v in body["model_version_status"]
                  if v["state"] == "AVAILABLE")


def reload_config(grpc_port: int, sources: list[ModelSource]):
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        return stub.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=to_proto(sources)), timeout=120)


@pytest.fixture
def in_process_server():
    """start_server(...) for one test; stopped afterwards."""
    servers = []

    def start(config_file: Path, *, allow: bool = False, poll_config: bool = False):
        server = start_server(ServeConfig(
            model_config_file=str(config_file), rest_port=0, grpc_port=0, poll_seconds=0.2,
            config_poll_seconds=None if poll_config else 0,
            allow_version_labels_for_unavailable_models=allow))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_the_flag_parses_as_tensorflow_model_server_does():
    def parsed(*extra: str) -> bool:
        args = build_parser().parse_args(["serve", "--model_config_file", "m.config", *extra])
        return serve_config_kwargs(args)["allow_version_labels_for_unavailable_models"]

    assert parsed() is False
    assert parsed(FLAG) is True
    assert parsed(f"{FLAG}=true") is True
    assert parsed(f"{FLAG}=false") is False
    with pytest.raises(SystemExit):
        parsed(f"{FLAG}=yes")


@pytest.mark.parametrize("on_disk", [(), (1,)], ids=["version-missing", "version-on-disk"])
def test_start_up_with_a_label_fails_without_the_flag(version_dir, tmp_path, on_disk):
    # Even a version that is on disk is refused: TF Serving checks labels before loading.
    base = models_dir(tmp_path, version_dir, *on_disk)
    config = write_model_config(tmp_path / "models.config",
                                config_of(base, (1,), {"stable": 1}))
    with pytest.raises(RuntimeError) as failure:
        launch_server(["--model_config_file", str(config)], tmp_path / "server", timeout=90)
    message = str(failure.value)
    assert "tailseg serve exited with 2" in message
    assert "Failed to start server" in message
    assert f"{config}: model 'tailseg': label 'stable' points to version 1" in message
    assert f"{FLAG}=true" in message


def test_with_the_flag_a_label_resolves_once_its_version_is_available(version_dir, tmp_path):
    base = models_dir(tmp_path, version_dir, 1)
    config = write_model_config(tmp_path / "models.config",
                                config_of(base, (1, 2), {"stable": 2}))
    with launch_server(["--model_config_file", str(config), f"{FLAG}=true",
                        "--file_system_poll_wait_seconds=0.2"], tmp_path / "server") as server:
        assert served_versions(server.rest_url) == ["1"]
        # TF Serving: the label is known, its version is not loaded yet.
        assert label_version(server.rest_url, "stable") == (
            404, "Servable not found for request: Specific(tailseg, 2)")
        shutil.copytree(version_dir, base / "2")
        wait_for(lambda: label_version(server.rest_url, "stable") == (200, "2"), 60,
                 "label stable to resolve to version 2")
        assert label_version(server.rest_url, "canary")[0] == 404


def test_a_reload_with_a_label_on_an_unavailable_version_keeps_the_old_config(
        version_dir, tmp_path, in_process_server):
    base = models_dir(tmp_path, version_dir, 1, 2)
    config = write_model_config(tmp_path / "models.config", config_of(base, (1,)))
    server = in_process_server(config)
    assert served_versions(f"http://127.0.0.1:{server.rest_port}") == ["1"]

    # Version 2 is on disk but not served: adding it and labelling it in one step is refused.
    with pytest.raises(grpc.RpcError) as refused:
        reload_config(server.grpc_port, config_of(base, (1, 2), {"stable": 2}))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "HandleReloadConfigRequest: model 'tailseg': label 'stable' points to version 2" in \
        refused.value.details()
    rest_url = f"http://127.0.0.1:{server.rest_port}"
    assert label_version(rest_url, "stable")[0] == 404
    server.registry.refresh()  # one more version poll: the old policy (1) still rules
    assert served_versions(rest_url) == ["1"], "the refused policy (1, 2) was applied"

    # The TF Serving way: serve the version first, then label it.
    response = reload_config(server.grpc_port, config_of(base, (1, 2)))
    assert response.status.error_code == 0
    assert served_versions(rest_url) == ["1", "2"]
    reload_config(server.grpc_port, config_of(base, (1, 2), {"stable": 2}))
    assert label_version(rest_url, "stable") == (200, "2")
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = "tailseg"
        request.model_spec.version_label = "stable"
        status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request)
    # get_model_status_impl.cc reads only model_spec.version: a label lists every version.
    assert [v.version for v in status.model_version_status] == [2, 1]


def test_the_flag_admits_new_labels_but_never_moves_one_to_an_unavailable_version(
        version_dir, tmp_path, in_process_server):
    base = models_dir(tmp_path, version_dir, 1)
    config = write_model_config(tmp_path / "models.config",
                                config_of(base, (1, 2), {"stable": 1}))
    server = in_process_server(config, allow=True)
    rest_url = f"http://127.0.0.1:{server.rest_port}"
    assert label_version(rest_url, "stable") == (200, "1")

    reload_config(server.grpc_port, config_of(base, (1, 2), {"stable": 1, "canary": 2}))
    assert label_version(rest_url, "canary")[0] == 404  # known, version 2 not loaded
    with pytest.raises(grpc.RpcError) as refused:
        reload_config(server.grpc_port, config_of(base, (1, 2), {"stable": 2, "canary": 2}))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "only covers labels new to the server, and 'stable' is at version 1 now" in \
        refused.value.details()
    assert label_version(rest_url, "stable") == (200, "1")


def test_a_refused_models_config_file_is_logged_kept_out_and_retried_at_each_poll(
        version_dir, tmp_path, in_process_server, caplog):
    base = models_dir(tmp_path, version_dir, 1)
    config = write_model_config(tmp_path / "models.config", config_of(base, policy="all"))
    server = in_process_server(config, poll_config=True)
    rest_url = f"http://127.0.0.1:{server.rest_port}"
    with caplog.at_level(logging.ERROR, logger="tailseg.serving.registry"):
        write_model_config(config, config_of(base, labels={"stable": 2}, policy="all"))
        wait_for(lambda: "label 'stable' points to version 2" in caplog.text, 30,
                 "the refused config to be logged")
    assert label_version(rest_url, "stable")[0] == 404
    # Version 2 arrives under the old policy (all); the unchanged file is then accepted.
    shutil.copytree(version_dir, base / "2")
    wait_for(lambda: label_version(rest_url, "stable") == (200, "2"), 60,
             "the same file to be accepted once version 2 is AVAILABLE")


def test_an_export_style_models_config_stays_refused_by_a_running_server(
        version_dir, tmp_path, in_process_server, caplog):
    # What an export writes (tailseg.serving.model_config.labelled_sources): a specific policy
    # that adds the new version and moves "stable" onto it in one file. server_core.cc checks
    # the labels before it applies the policy, so the new version never loads under the old
    # policy and the file is refused at every poll, even with version 2 on disk: a running
    # server needs a restart (Kubernetes rolls the pods on the ConfigMap change).
    base = models_dir(tmp_path, version_dir, 1)
    config = write_model_config(tmp_path / "models.config", config_of(base, (1,),
                                                                      {"stable": 1}))
    server = in_process_server(config, allow=True, poll_config=True)
    rest_url = f"http://127.0.0.1:{server.rest_port}"
    wait_for(lambda: label_version(rest_url, "stable") == (200, "1"), 60, "version 1 labelled")
    shutil.copytree(version_dir, base / "2")
    with caplog.at_level(logging.ERROR, logger="tailseg.serving.registry"):
        write_model_config(config, config_of(base, (2,), {"stable": 2}))
        wait_for(lambda: "label 'stable' points to version 2" in caplog.text, 30,
                 "the refused config to be logged")
    for _ in range(3):
        server.registry.refresh()
    assert served_versions(rest_url) == ["1"]
    assert label_version(rest_url, "stable") == (200, "1")


def test_a_reload_with_a_relative_base_path_is_invalid_argument(version_dir, tmp_path,
                                                                in_process_server):
    base = models_dir(tmp_path, version_dir, 1)
    server = in_process_server(write_model_config(tmp_path / "models.config",
                                                  config_of(base, policy="all")))
    with pytest.raises(grpc.RpcError) as refused:
        reload_config(server.grpc_port, config_of(Path("models/tailseg")))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected model tailseg to have an absolute path or URI" in refused.value.details()
    assert served_versions(f"http://127.0.0.1:{server.rest_port}") == ["1"]


def _production_args(tmp_path: Path, version_dir: Path, with_flag: bool) -> list[str]:
    """The production Deployment's args for `tailseg serve`, with its ConfigMap's files in
    tmp_path and the model repository moved under tmp_path (version 1 in it)."""
    kinds = _by_kind(kustomize("production"))
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    data = kinds["ConfigMap"]["data"]
    config = text_format.Parse(data["models.config"], model_server_config_pb2.ModelServerConfig())
    for model in config.model_config_list.config:
        local = tmp_path / model.base_path.lstrip("/")
        shutil.copytree(version_dir, local / "1")
        model.base_path = str(local)
    files = {"/etc/tfserving/models.config": text_format.MessageToString(config),
             "/etc/tfserving/monitoring.config": data["monitoring.config"],
             "/etc/tfserving/batching.config": data["batching.config"]}
    args = []
    for arg in container["args"]:
        flag, _, value = arg.partition("=")
        if flag in TF_SERVING_ONLY or flag == FLAG and not with_flag:
            continue
        if value in files:
            local = tmp_path / Path(value).name
            local.write_text(files[value])
            value = str(local)
        args.append(f"{flag}={value}")
    assert any(a.startswith(f"{FLAG}=") for a in args) == with_flag, container["args"]
    return args


@pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) not on PATH")
def test_the_production_overlay_starts_only_because_it_sets_the_flag(version_dir, tmp_path):
    assert (ROOT / "infra/k8s/overlays/production/models.config").is_file()
    args = _production_args(tmp_path / "with", version_dir, with_flag=True)
    with launch_server(args, tmp_path / "with" / "server") as server:
        assert label_version(server.rest_url, "stable") == (200, "1")
    # Without the flag the same Deployment would exit, as tensorflow_model_server 2.20 does.
    args = _production_args(tmp_path / "without", version_dir, with_flag=False)
    with pytest.raises(RuntimeError, match="(?s)exited with 2.*Failed to start server.*"
                                           "label 'stable' points to version 1"):
        launch_server(args, tmp_path / "without" / "server", timeout=90)
