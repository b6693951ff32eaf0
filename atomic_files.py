"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader (or a later run) therefore sees either the old file or the complete new
one, never half of it, however the writing process is stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

TEMP_MARKER = ".tmp-"


def temporary_sibling(path: Path) -> Path:
    """A new, empty, uniquely named file beside `path`, recognisable as unfinished work.

    Created with the usual permissions (0666 less the umask), unlike `mkstemp`'s 0600.
    """
    while True:
        candidate = path.parent / f".{path.name}{TEMP_MARKER}{secrets.token_hex(6)}"
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return candidate
        except FileExistsError:
            continue


def naming(error: OSError, path: Path) -> OSError:
    """The same error, naming `path` (a failed write on an open file names nothing; a
    temporary's name means little to the user)."""
    if error.errno is None:
        return error
    named = type(error)(error.errno, error.strerror, str(path))
    named.__cause__ = error
    return named


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically; an OS error (full disk, read-only folder) names `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_sibling(path)
    except OSError as error:
        if error.filename is not None and TEMP_MARKER not in str(error.filename):
            raise
        raise naming(error, path.parent) from None
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise naming(error, path) from None
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomic(path, buffer.getvalue())


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Fill a temporary folder; it becomes `path` only when the block ends without error.

    An existing `path` is replaced. A killed process leaves a `.NAME.tmp-…` folder
    that `remove_stale_temporaries` clears, never a half-filled `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = path.parent / f".{path.name}{TEMP_MARKER}{secrets.token_hex(6)}"
        try:
            temporary.mkdir(mode=0o777)  # the umask applies, as for any folder
            break
        except FileExistsError:
            continue
    try:
        yield temporary
        if path.exists():
            shutil.rmtree(path)
        os.rename(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete unfinished temporaries left directly in `folder` by a killed run."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        if entry.name.startswith(".") and TEMP_MARKER in entry.name:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    return removed


def sha256_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
