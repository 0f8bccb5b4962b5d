"""Infra validation, as TFX's InfraValidator (LOAD_AND_QUERY): load an exported version in a
fresh process with the server's own loading code, check its signature and replay its warm-up
requests. Run as `python -m tailseg.serving.infra_validate DIR [--model-name NAME]`; it prints
one JSON line and exits 0 (valid) or 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tailseg.errors import InfraValidationError
from tailseg.runtime import TENSORFLOW_ENV, cpu_subprocess_environment


def validate_version(saved_model_dir: str | Path, model_name: str = "model") -> dict:
    """In this process: load, check the signature, run the warm-up requests (required)."""
    from google.protobuf import json_format

    from tailseg.export import SIGNATURE
    from tailseg.serving.version import load_version
    from tailseg.serving.warmup import read_warmup_requests

    start = time.perf_counter()
    directory = Path(saved_model_dir)
    loaded = load_version(model_name, directory, require_warmup=True)
    signature = json_format.MessageToDict(loaded.signature_defs[SIGNATURE],
                                          preserving_proto_field_name=True)
    return {"ok": True, "saved_model": str(directory), "signature": signature,
            "tensorflow_env": {key: os.environ.get(key) for key in TENSORFLOW_ENV},
            "warmup_requests": len(read_warmup_requests(directory)),
            "seconds": round(time.perf_counter() - start, 3)}


def run_infra_validation(saved_model_dir: str | Path, model_name: str = "model",
                         timeout: float = 600) -> dict:
    """Run validate_version in a separate Python process.

    Raises:
        InfraValidationError: the process failed, timed out or printed no result.
    """
    command = [sys.executable, "-m", "tailseg.serving.infra_validate", str(saved_model_dir),
               "--model-name", model_name]
    env = cpu_subprocess_environment()
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env,
                                timeout=timeout, check=False)
    except subprocess.TimeoutExpired as error:
        raise InfraValidationError(f"{saved_model_dir}: infra validation did not finish in "
                                   f"{timeout:g} s") from error
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if result.returncode != 0 or not report.get("ok"):
        reason = report.get("error") or result.stderr[-2000:]
        raise InfraValidationError(f"{saved_model_dir}: infra validation failed: {reason}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saved_model_dir")
    parser.add_argument("--model-name", default="model")
    args = parser.parse_args(argv)
    try:
        report = validate_version(args.saved_model_dir, args.model_name)
    except Exception as error:  # report every failure as JSON to the parent
        print(json.dumps({"ok": False, "saved_model": args.saved_model_dir,
                          "error": f"{type(error).__name__}: {error}"}))
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
