"""Which model configs `tailseg serve` accepts: server_core.cc's ValidateModelConfigList rules.

A model is listed once, and base paths are absolute paths or URIs unless the server has
--model_config_list_root_dir, which must itself be absolute; relative base paths then resolve
against it. The same rules hold for a models.config file, a HandleReloadConfigRequest and the
one-model config that --model_base_path makes (main.cc), so a config the stand-in serves is one
tensorflow_model_server would start with.
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tailseg.errors import ConfigError
from tailseg.serving.model_config import read_model_config
from tailseg.serving.server import ServeConfig, build_registry


def _config(tmp_path, *entries: tuple[str, str]):
    path = tmp_path / "models.config"
    path.write_text("model_config_list {\n" + "".join(
        f"  config {{ name: '{name}' base_path: '{base}' model_platform: 'tensorflow' }}\n"
        for name, base in entries) + "}\n")
    return path


def test_a_relative_base_path_is_refused_without_a_root_dir(tmp_path):
    path = _config(tmp_path, ("tailseg", "serving/tailseg"))
    with pytest.raises(ConfigError, match=r"models.config: Expected model tailseg to have an "
                                          r"absolute path or URI; got base_path\(\)="
                                          r"serving/tailseg"):
        read_model_config(path)
    (source,) = read_model_config(path, "/srv/models")
    assert str(source.base_path) == "/srv/models/serving/tailseg"


def test_absolute_paths_and_uris_pass_and_keep_their_value(tmp_path):
    path = _config(tmp_path, ("a", "/models/a"), ("b", "s3://bucket/b"))
    assert [str(s.base_path) for s in read_model_config(path, "/root")][0] == "/models/a"
    assert len(read_model_config(path)) == 2


def test_a_model_listed_twice_is_refused(tmp_path):
    path = _config(tmp_path, ("tailseg", "/m/a"), ("tailseg", "/m/b"))
    with pytest.raises(ConfigError, match="Illegal to list model tailseg, multiple times in "
                                          "config list"):
        read_model_config(path)


def test_the_root_dir_must_be_absolute():
    with pytest.raises(ValidationError, match="Expected non-empty absolute path or URI; got "
                                              "model_config_list_root_dir=models"):
        ServeConfig(model_config_file="/m/models.config", model_config_list_root_dir="models")


def test_a_relative_model_base_path_fails_the_start_before_tensorflow_loads(tmp_path,
                                                                            monkeypatch):
    (tmp_path / "tailseg" / "1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)  # the relative path exists: it is refused for being relative
    with pytest.raises(ConfigError, match=r"Failed to start server. Error: Expected model "
                                          r"tailseg to have an absolute path or URI; got "
                                          r"base_path\(\)=tailseg"):
        build_registry(ServeConfig(model_base_path="tailseg"))
