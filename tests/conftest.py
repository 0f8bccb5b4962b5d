"""Test-wide set-up: all ZenML state in a temporary directory, quiet TensorFlow."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# ZenML reads these at import; set them before any test module imports zenml, so tests never
# touch the developer's own ZenML store.
_ZENML_HOME = Path(tempfile.mkdtemp(prefix="tailseg-zenml-"))
os.environ.update({
    "ZENML_CONFIG_PATH": str(_ZENML_HOME / "config"),
    "ZENML_LOCAL_STORES_PATH": str(_ZENML_HOME / "stores"),
    "ZENML_ANALYTICS_OPT_IN": "false",
    "ZENML_LOGGING_VERBOSITY": "WARN",
    "ZENML_ENABLE_RICH_TRACEBACK": "false",
    "AUTO_OPEN_DASHBOARD": "false",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "CUDA_VISIBLE_DEVICES": "",
})

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_DATA = PROJECT_ROOT / "data" / "tailings-br"


@pytest.fixture(scope="session", autouse=True)
def zenml_home():
    yield _ZENML_HOME
    shutil.rmtree(_ZENML_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def bundled_data() -> Path:
    return BUNDLED_DATA
