"""One error path for every script: an expected error is one line on stderr and an exit code.

Exit codes, the same for every script:

    0  done
    1  bad input or a failed run (the message names the file, key or value, and what to do)
    2  bad arguments or config values (argparse's own code, kept for the config checks)
    3  some photos could not be used (the extractor and `inference.py --embed`; listed)
    4  the run folder is in use by another process (the message names it)
    130 interrupted (Ctrl-C)

Expected errors are the project's own exceptions (subclasses of `ExpectedError`, each
also a ValueError, RuntimeError or OSError as before) and operating-system errors such as
a full disk or a read-only folder, which name their path. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import errno
import functools
import re
import sys
from typing import Callable

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_SOME_FAILED, EXIT_BUSY, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

OS_ERROR_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space and rerun (finished work is kept)",
    errno.EDQUOT: "disk quota exceeded; free some space and rerun",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.EEXIST: "exists and is not a folder",
    errno.ENOTDIR: "a part of this path is a file, not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOENT: "not found",
}


class ExpectedError(Exception):
    """Bad input or a refused operation: reported as one line, never a traceback."""

    exit_code = EXIT_ERROR


def one_line(text: str) -> str:
    """The message on one line. An error re-raised from a DataLoader worker carries the worker's
    traceback in its text; its last line is the original message."""
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = re.sub(r"^[\w.]+: ", "", last)  # drop the exception's class name
    return " ".join(text.split())


def describe_os_error(error: OSError) -> str:
    """`PATH: what went wrong` for an operating-system error."""
    reason = OS_ERROR_HINTS.get(error.errno, error.strerror or str(error))
    names = [str(n) for n in (error.filename, error.filename2) if n is not None]
    if not names:
        return f"{reason} ({error})" if error.errno in OS_ERROR_HINTS else str(error)
    return f"{' → '.join(names)}: {reason}"


def error_message(error: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) for an expected error; None for anything else."""
    if isinstance(error, ExpectedError):
        return one_line(str(error)), error.exit_code
    if isinstance(error, OSError) and error.errno is not None:
        return one_line(describe_os_error(error)), EXIT_ERROR
    return None


def cli_main(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a script's `main(argv=None) -> int` so that expected errors end it with one line."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as error:  # noqa: BLE001 (re-raised unless expected)
            expected = error_message(error)
            if expected is None:
                raise
            message, code = expected
            print(f"error: {message}", file=sys.stderr)
            return code

    return wrapped
