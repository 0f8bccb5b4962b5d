"""Output folders that lose nothing: checks before a run, scratch files, an all-or-nothing swap.

Every temporary file a run writes into the output folder is named `.tailseg-tmp-<pid>-<name>`:
strip rasters, staged outputs, the old outputs while they are being replaced and the swap
journal. A run that dies without cleaning up (SIGKILL, power loss) leaves such files behind;
the next run in the folder finds them by their prefix, sees that process <pid> is gone, and
removes them, first completing any swap that was under way. Other files in the folder are never
touched: of the scratch names tailseg wrote before issue 14, only those of the outputs being
written now are recognised, so a user's `.notes.tmp-4242` survives.

Replacing a set of outputs (`swap_into_place`): the new files are written completely under
staged names; then a journal listing (staged, final, backup) names is written and fsynced; the
existing outputs are renamed to backups, the staged files to their final names, and finally
the backups and the journal are removed. An error or signal during the renames puts the old
outputs back; a crash during them leaves the journal, from which the next run completes the
swap (every new file was complete before the journal existed). Readers never see a mix of
old and new outputs once any run has started in the folder again.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import takewhile
from pathlib import Path

from tailseg.errors import OutputExistsError, OutputWriteError, PredictionInterrupted

logger = logging.getLogger(__name__)

SCRATCH_PREFIX = ".tailseg-tmp-"
JOURNAL = "swap.json"


def scratch_path(out_dir: Path, name: str) -> Path:
    """A hidden temporary path in out_dir owned by this process."""
    return Path(out_dir) / f"{SCRATCH_PREFIX}{os.getpid()}-{name}"


def _owner(name: str, legacy: list[tuple[str, str]]) -> int | None:
    """The pid in a scratch name of tailseg, or None for any other name."""
    if name.startswith(SCRATCH_PREFIX):
        pid = name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        return int(pid) if pid.isdigit() else None
    for prefix, suffix in legacy:
        if name.startswith(prefix) and name.endswith(suffix):
            pid = name[len(prefix): len(name) - len(suffix)]
            if pid.isdigit():
                return int(pid)
    return None


def _legacy_names(outputs: Iterable[Path]) -> list[tuple[str, str]]:
    """(prefix, suffix) around the pid of the scratch names tailseg wrote for these outputs
    before issue 14: .<stem>_<key>.strips-<pid>.tif and .<output name>.tmp-<pid>."""
    names = []
    for output in outputs:
        names.append((f".{output.name}.tmp-", ""))
        if output.suffix == ".tif":
            names.append((f".{output.stem}.strips-", ".tif"))
    return names


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_leftovers(out_dir: Path, outputs: Iterable[Path] = ()) -> list[Path]:
    """Finish interrupted swaps and delete the scratch files of processes that are gone.

    Only names tailseg makes are candidates: `.tailseg-tmp-<pid>-*`, and the pre-issue-14
    scratch names of `outputs` (the output files of the run about to start).
    """
    legacy = _legacy_names(outputs)
    leftovers = sorted(p for p in Path(out_dir).iterdir()
                       if (pid := _owner(p.name, legacy)) is not None and not _alive(pid)
                       and not p.is_dir())
    for journal in [p for p in leftovers if p.name.endswith(f"-{JOURNAL}")]:
        logger.warning("%s: completing the output swap of a run that was stopped", journal)
        _roll_forward(journal)
    removed = []
    for path in leftovers:
        if path.exists():
            path.unlink()
            removed.append(path)
    if removed:
        logger.warning("%s: removed %d temporary files of stopped runs (%s)", out_dir,
                       len(removed), ", ".join(p.name for p in removed))
    return removed


def prepare_output_dir(out_dir: Path) -> list[Path]:
    """Create out_dir if needed and prove it writable, with errors that say what to fix.

    Returns:
        The folders created, deepest first, for remove_created() should the run fail.

    Raises:
        OutputWriteError: out_dir is a file, cannot be created or is not writable.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputWriteError(f"{out_dir}: the output path exists and is not a folder; pass a "
                               "folder to --out")
    missing = list(takewhile(lambda folder: not folder.exists(), (out_dir, *out_dir.parents)))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = scratch_path(out_dir, "probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        remove_created(missing)
        raise OutputWriteError(f"{out_dir}: the output folder cannot be written "
                               f"({error.strerror or error}); fix its permissions or choose "
                               "another --out") from error
    return missing


def remove_created(folders: list[Path]) -> None:
    """Remove the folders prepare_output_dir created (deepest first) that are still empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another run wrote into it), or gone: leave it
            return


def check_existing(finals: dict[str, Path], overwrite: bool) -> None:
    """Raise OutputExistsError if an output exists and overwrite is False."""
    existing = [str(p) for p in finals.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"outputs exist already: {', '.join(existing)}; pass overwrite "
                                "(--overwrite) or choose another output folder")


def swap_into_place(staged: dict[str, Path], finals: dict[str, Path]) -> None:
    """Rename complete staged files over their finals as one set (module docstring)."""
    out_dir = next(iter(finals.values())).parent
    pairs = [(str(staged[key]), str(final), str(scratch_path(out_dir, f"old-{final.name}")))
             for key, final in finals.items()]
    journal = scratch_path(out_dir, JOURNAL)
    try:
        with open(journal, "w") as handle:
            json.dump(pairs, handle)
            handle.flush()
            os.fsync(handle.fileno())
        for _, final, backup in pairs:
            if os.path.exists(final):
                os.replace(final, backup)
        for new, final, _ in pairs:
            os.replace(new, final)
    except BaseException:
        _roll_back(pairs)
        journal.unlink(missing_ok=True)
        raise
    for _, _, backup in pairs:
        Path(backup).unlink(missing_ok=True)
    journal.unlink()


def _roll_back(pairs: list[tuple[str, str, str]]) -> None:
    for new, final, backup in reversed(pairs):
        if os.path.exists(backup):
            os.replace(backup, final)
        elif not os.path.exists(new) and os.path.exists(final):
            os.unlink(final)  # a new output without an old one to restore


def _roll_forward(journal: Path) -> None:
    try:
        pairs = json.loads(journal.read_text())
    except ValueError:  # cut short while being written: no rename had started
        journal.unlink()
        return
    for new, final, backup in pairs:
        if os.path.exists(new):
            os.replace(new, final)
        Path(backup).unlink(missing_ok=True)
    journal.unlink()


@contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGTERM (what `timeout`, Kubernetes and systemd send) raises PredictionInterrupted like
    SIGINT raises KeyboardInterrupt, so clean-up code runs. Only in the main thread, where
    Python delivers signals; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame) -> None:
        raise PredictionInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def guard_os_errors(out_dir: Path, error: OSError) -> OutputWriteError:
    """An OSError met while writing outputs, as an OutputWriteError naming the folder."""
    target = error.filename or out_dir
    return OutputWriteError(f"{target}: writing the outputs failed ({error.strerror or error}); "
                            f"nothing was written to {out_dir}. Free space or fix permissions, "
                            "then run again")
