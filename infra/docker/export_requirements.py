"""Print pyproject.toml's [project] dependencies, and those of an optional extra, as
requirements.txt lines.

ZenML's DockerSettings.pyproject_export_command runs this when it builds the step image
(zenml.k8s.yaml, zenml.kubeflow.yaml); `uv export`/`poetry export`, its defaults, need a lock
file we do not keep. The extra (kubernetes, kubeflow) brings the stack's integrations pinned:
the overlays turn off ZenML's own, unpinned, stack requirements (install_stack_requirements).
A self-reference such as `tailseg[kubernetes]` is expanded, never printed (pip would look for
tailseg on the index).
Usage: python infra/docker/export_requirements.py pyproject.toml [EXTRA]
"""

import re
import sys
import tomllib

SELF_REFERENCE = re.compile(r"^\s*(?P<name>[A-Za-z0-9._-]+)\s*\[(?P<extras>[^\]]*)\]\s*$")


def requirements(project: dict, extra: str | None = None) -> list[str]:
    """The dependencies, then the extra's (self-references expanded), each once, in order."""
    extras = project.get("optional-dependencies", {})
    lines, seen = [], set()

    def add(entries: list[str]) -> None:
        for entry in entries:
            match = SELF_REFERENCE.match(entry)
            if match and match["name"].lower() == project["name"].lower():
                for nested in match["extras"].split(","):
                    add(extras[nested.strip()])
            elif entry not in seen:
                seen.add(entry)
                lines.append(entry)

    add(project["dependencies"])
    if extra is not None:
        if extra not in extras:
            raise SystemExit(f"pyproject.toml has no extra {extra!r}; it has {sorted(extras)}")
        add(extras[extra])
    return lines


def main(path: str, extra: str | None = None) -> int:
    with open(path, "rb") as handle:
        project = tomllib.load(handle)["project"]
    for requirement in requirements(project, extra):
        print(requirement)
    return 0


if __name__ == "__main__":
    arguments = sys.argv[1:]
    sys.exit(main(arguments[0] if arguments else "pyproject.toml",
                  arguments[1] if len(arguments) > 1 else None))
