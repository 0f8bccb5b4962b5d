"""Print pyproject.toml's [project] dependencies as requirements.txt lines.

ZenML's DockerSettings.pyproject_export_command runs this when it builds the step image
(zenml.k8s.yaml); `uv export`/`poetry export`, its defaults, need a lock file we do not keep.
Usage: python infra/docker/export_requirements.py pyproject.toml
"""

import sys
import tomllib


def main(path: str) -> int:
    with open(path, "rb") as handle:
        project = tomllib.load(handle)["project"]
    for requirement in project["dependencies"]:
        print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))
