"""One run, one folder: an exclusive lock on a training run's OUTPUT_DIR.

The lock is an `fcntl.flock` on `OUTPUT_DIR/.lock`, held for the whole run. The kernel
drops it when the holding process ends, however it ends, so a killed run never leaves a
stale lock behind. The file says who holds it, for the refusal message.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cli_errors import EXIT_BUSY, ExpectedError

LOCK_FILE = ".lock"


class RunFolderBusyError(ExpectedError, RuntimeError):
    """Another process is training in the same run folder."""

    exit_code = EXIT_BUSY


def same_folder(recorded: str | os.PathLike, current: str | os.PathLike) -> bool:
    """Whether two spellings name the same folder (relative, trailing slash, links). A recorded
    folder that no longer exists counts as the same: the run folder was moved."""
    recorded, current = Path(recorded), Path(current)
    if not recorded.exists():
        return True
    try:
        return os.path.samefile(recorded, current)
    except OSError:
        return recorded.resolve() == current.resolve()


@contextmanager
def locked_run_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold the run folder's lock for the block; `RunFolderBusyError` names the holder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = " ".join(handle.read().split()) or "another process (starting up)"
            raise RunFolderBusyError(f"{folder}: another training run is using this folder ({holder}); wait for "
                                     "it to finish, or use another --output-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:200]}\n")
        handle.flush()
        yield path
    finally:
        handle.close()  # closing the file releases the lock
