"""Text files that readers (TF Serving polling models.config, a browser, another run) never see
half-written: write a temporary file in the same folder, then rename it over the target."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new, empty temporary file in path's folder, with the permissions a plain open() gives
    (0666 less the umask, applied by the kernel: mkstemp's 0600 would lock out a server that
    runs as another user, and reading the umask would change it for every thread)."""
    while True:
        temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}"
        try:
            return os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temporary
        except FileExistsError:
            continue


def write_atomically(path: str | Path, text: str | bytes) -> Path:
    """Replace path's content with text (or bytes, e.g. a PNG) in one rename, keeping an
    existing target's permissions; nothing partial is ever left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = _create_beside(path)
    try:
        with os.fdopen(handle, "wb" if isinstance(text, bytes) else "w") as stream:
            try:
                os.fchmod(stream.fileno(), stat.S_IMODE(path.stat().st_mode))
            except FileNotFoundError:
                pass
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
