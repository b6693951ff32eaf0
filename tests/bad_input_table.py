"""The bad-input table: every case builds its bad file, runs a script, and expects one line.

Used by `test_cli_errors.py` (each case through the script's `main(argv)`), and runnable
from the command line, where each case runs as its own process and the table is printed:

    python tests/bad_input_table.py SCRATCH_FOLDER
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    script: str          # module name of the script, e.g. "train_twin_verification"
    args: list[str]
    exit_code: int
    needle: str          # must appear in the message: the file, key or identity at fault
    needs_landmarker: bool = False


class PayloadThatRunsCode:
    """Pickles to a call of `print`; a weights-only loader must refuse it without running it."""

    def __reduce__(self):
        return print, ("this checkpoint ran code",)


def face_png_with_huge_header(path: Path, width: int = 14000, height: int = 14000) -> Path:
    """A small PNG whose header claims `width×height` pixels (what a decoder sees first)."""
    import struct
    import zlib

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    struct.pack_into(">II", data, 16, width, height)  # IHDR width and height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def copy_data(data: dict[str, Path], destination: Path) -> dict[str, Path]:
    source = data["face_parts_dataset_path"].parent
    shutil.copytree(source, destination)
    return {key: destination / path.name for key, path in data.items()}


def edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    path.write_text(json.dumps(change(value)))


def train_tiny_run(data: dict[str, Path], run_dir: Path) -> Path:
    """A one-epoch tiny run (best.pth, latest.pth, split.json, config.json) in `run_dir`."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import tiny_train_config
    from train_twin_verification import run_training

    run_training(tiny_train_config(data, run_dir, num_epochs=1))
    return run_dir


def build_cases(root: Path, data: dict[str, Path], run_dir: Path, adaface_file: Path,
                face_photo: Path | None) -> dict[str, Case]:
    """Write every bad file under `root`; returns the cases by name."""
    import numpy as np
    import torch

    from combined_model import TwinVerificationModel

    root.mkdir(parents=True, exist_ok=True)
    config = run_dir / "config.json"
    best = run_dir / "checkpoints" / "best.pth"
    train = ["--config", str(config)]
    cases: dict[str, Case] = {}

    def out(name: str) -> str:
        return str(root / f"out_{name}")

    def run_copy(name: str) -> Path:
        folder = root / f"run_{name}"
        shutil.copytree(run_dir, folder)
        (folder / ".lock").unlink(missing_ok=True)
        return folder

    def data_flags(paths: dict[str, Path]) -> list[str]:
        return [part for key, path in paths.items() for part in (f"--{key.replace('_', '-')}", str(path))]

    # --- training: index files, tensors, checkpoints, splits, folders, config values
    bad = copy_data(data, root / "data_index_list")
    bad["face_parts_dataset_path"].write_text("[]")
    cases["train: index file is a list"] = Case("train_twin_verification", train + data_flags(bad) + [
        "--output-dir", out("index_list")], 1, "face_parts_dataset.json")

    bad = copy_data(data, root / "data_part_number")
    edit_json(bad["face_parts_dataset_path"],
              lambda v: {p: {k: {**parts, "nose": 5} for k, parts in e.items()} for p, e in v.items()})
    cases["train: a part path is a number"] = Case("train_twin_verification", train + data_flags(bad) + [
        "--output-dir", out("part_number")], 1, "nose must be a path string")

    bad = copy_data(data, root / "data_truncated_tensor")
    tensor = next(bad["face_parts_dataset_path"].parent.rglob("adaface_input.pt"))
    tensor.write_bytes(tensor.read_bytes()[:100])
    cases["train: truncated adaface_input.pt"] = Case("train_twin_verification", train + data_flags(bad) + [
        "--output-dir", out("truncated_tensor")], 1, str(tensor))

    folder = run_copy("latest_truncated")
    path = folder / "checkpoints" / "latest.pth"
    path.write_bytes(path.read_bytes()[:1000])
    cases["train: truncated latest.pth"] = Case("train_twin_verification", train + [
        "--output-dir", str(folder), "--num-epochs", "1"], 1, f"{path}: not a readable checkpoint")

    folder = run_copy("latest_empty")
    (folder / "checkpoints" / "latest.pth").write_bytes(b"")
    cases["train: empty latest.pth"] = Case("train_twin_verification", train + [
        "--output-dir", str(folder)], 1, "move it away")

    folder = run_copy("best_over_latest")
    shutil.copy(best, folder / "checkpoints" / "latest.pth")
    cases["train: best.pth copied over latest.pth"] = Case("train_twin_verification", train + [
        "--output-dir", str(folder)], 1, "looks like a best.pth")

    split_edits = {
        "split.json without 'test'": (lambda s: {k: v for k, v in s.items() if k != "test"}, "'test'"),
        "split.json is a list": (lambda s: s["train"], "split.json"),
        "split.json: an identity in train and val": (
            lambda s: {**s, "val": s["val"] + s["train"][:1]}, "in both train and val"),
        "split.json: twins in different splits": (
            lambda s: {**s, "train": s["train"][1:], "test": s["test"] + s["train"][:1]}, "different splits"),
    }
    for number, (name, (change, needle)) in enumerate(split_edits.items()):
        folder = run_copy(f"split_{number}")
        edit_json(folder / "split.json", change)
        cases[f"train: {name}"] = Case("train_twin_verification", train + ["--output-dir", str(folder)], 1, needle)
        if number == 2:
            cases["evaluate: split.json with an identity in train and val"] = Case(
                "evaluate", ["--checkpoint", str(folder / "checkpoints" / "best.pth"), "--no-progress",
                             "--bootstrap", "0", "--workers", "0"], 1, "in both train and val")

    bad = copy_data(data, root / "data_person_gone")
    gone = json.loads((run_dir / "split.json").read_text())["train"][0]
    for key in ("face_parts_dataset_path", "tensor_dataset_path"):
        edit_json(bad[key], lambda v: {p: e for p, e in v.items() if p != gone})
    folder = run_copy("person_gone")
    cases["train: split names an identity with no images left"] = Case(
        "train_twin_verification", train + data_flags(bad) + ["--output-dir", str(folder)], 1, f"'{gone}'")

    (root / "a_file").write_text("not a folder")
    cases["train: --output-dir is a file"] = Case("train_twin_verification", train + [
        "--output-dir", str(root / "a_file")], 1, f"{root / 'a_file'}: exists and is not a folder")
    for flag, value, key in (("--log-every-steps", "0", "log_every_steps"), ("--device", "tpu", "device"),
                             ("--embedding-dim", "0", "embedding_dim"), ("--batch-size", "0", "batch_size")):
        cases[f"train: {flag} {value}"] = Case("train_twin_verification", train + [
            flag, value, "--output-dir", out(key)], 2, key)
    (root / "garbage.ckpt").write_bytes(b"not a checkpoint at all")
    cases["train: AdaFace file is garbage"] = Case("train_twin_verification", train + [
        "--adaface-checkpoint", str(root / "garbage.ckpt"), "--output-dir", out("garbage_adaface")], 1,
        "garbage.ckpt")

    # --- checkpoints for evaluation, inference and export
    saved = torch.load(best, map_location="cpu", weights_only=True)
    files = {"truncated": root / "truncated.pth", "empty": root / "empty.pth", "wrong_shape": root / "wrong_shape.pth",
             "malicious": root / "malicious.pth", "nan": root / "nan.pth", "adaface_gone": root / "adaface.pth"}
    files["truncated"].write_bytes(best.read_bytes()[:2000])
    files["empty"].write_bytes(b"")
    wrong = {**saved, "model_state_dict": dict(saved["model_state_dict"])}
    key = next(k for k in wrong["model_state_dict"] if k.startswith("projection") and k.endswith("weight"))
    wrong["model_state_dict"][key] = torch.zeros(3, 3)
    torch.save(wrong, files["wrong_shape"])
    files["malicious"].write_bytes(pickle.dumps({"model_state_dict": PayloadThatRunsCode()}, protocol=2))
    nan = {**saved, "model_state_dict": dict(saved["model_state_dict"])}
    nan["model_state_dict"][key] = torch.full_like(nan["model_state_dict"][key], float("nan"))
    torch.save(nan, files["nan"])
    model_config = saved["model_config"]
    torch.manual_seed(0)
    with_adaface = TwinVerificationModel(**{**model_config, "adaface_checkpoint": str(adaface_file)})
    torch.save(with_adaface.deployable_checkpoint(part_crop_size=saved["part_crop_size"], threshold=0.3,
                                                  config=saved["config"]), files["adaface_gone"])
    missing_adaface = ["--adaface-checkpoint", str(root / "moved_away.ckpt")]
    needles = {"truncated": "truncated.pth: not a readable checkpoint", "empty": "empty.pth: not a readable",
               "wrong_shape": "wrong_shape.pth: its weights do not fit", "malicious": "malicious.pth: refused",
               "nan": "NaN or infinity", "adaface_gone": "moved_away.ckpt"}
    evaluate_flags = ["--no-progress", "--bootstrap", "0", "--workers", "0"]
    for name, path in files.items():
        extra = missing_adaface if name == "adaface_gone" else []
        cases[f"evaluate: {name} checkpoint"] = Case("evaluate", ["--checkpoint", str(path), *extra, *evaluate_flags,
                                                                  "--output-dir", out(f"eval_{name}")], 1, needles[name])
    cases["evaluate: --device tpu"] = Case("evaluate", ["--checkpoint", str(best), "--device", "tpu",
                                                        *evaluate_flags], 2, "device 'tpu'")
    for name in ("truncated", "nan", "adaface_gone"):
        extra = missing_adaface if name == "adaface_gone" else []
        cases[f"export_onnx: {name} checkpoint"] = Case("export_onnx", [
            "--checkpoint", str(files[name]), "--output-dir", out(f"onnx_{name}"), *extra], 1, needles[name])

    # --- inference and extraction: photos
    huge = face_png_with_huge_header(root / "huge.png")
    two = [str(face_photo or huge), str(face_photo or huge)]
    for name in ("nan", "truncated", "adaface_gone"):
        extra = missing_adaface if name == "adaface_gone" else []
        cases[f"inference: {name} checkpoint"] = Case("inference", [*two, "--checkpoint", str(files[name]), *extra],
                                                      1, needles[name], needs_landmarker=True)
    cases["inference: a 14000×14000 photo"] = Case("inference", [str(huge), *two[:1], "--checkpoint", str(best)], 1,
                                                   "huge.png: 14000×14000", needs_landmarker=True)
    cases["inference: --device tpu"] = Case("inference", [*two, "--checkpoint", str(best), "--device", "tpu"], 2,
                                            "device 'tpu'")
    bad_photos = root / "bad_photos"
    bad_photos.mkdir()
    for name in ("a.jpg", "b.png"):
        (bad_photos / name).write_text("not a photo")
    existing = root / "embeddings.npz"
    np.savez(existing, paths=np.array(["p1", "p2", "p3", "p4"]), embeddings=np.ones((4, 16), np.float32))
    cases["inference: --embed over bad photos keeps the old output"] = Case(
        "inference", ["--embed", str(bad_photos), "-o", str(existing), "--checkpoint", str(best)], 3,
        f"{existing} was not written", needs_landmarker=True)

    cases["extractor: --jpg-dataset is a folder"] = Case("face_parts_extractor", [
        "--jpg-dataset", str(root), "--output-dir", out("extract_folder")], 1, f"{root}: is a folder")
    dataset = root / "jpg_dataset.json"
    dataset.write_text(json.dumps({"p": [str(huge)]}))
    damaged = root / "out_extract_damaged"
    damaged.mkdir()
    (damaged / "extraction.json").write_text('{"crop_size": 22')
    cases["extractor: corrupt extraction.json"] = Case("face_parts_extractor", [
        "--jpg-dataset", str(dataset), "--output-dir", str(damaged), "--no-progress"], 1,
        str(damaged / "extraction.json"), needs_landmarker=True)
    cases["extractor: --output-dir is a file"] = Case("face_parts_extractor", [
        "--jpg-dataset", str(dataset), "--output-dir", str(root / "a_file"), "--no-progress"], 1,
        "a_file: exists and is not a folder", needs_landmarker=True)
    cases["extractor: a 14000×14000 photo"] = Case("face_parts_extractor", [
        "--jpg-dataset", str(dataset), "--output-dir", out("extract_huge"), "--no-progress", "--contact-sheet", "0"],
        3, "more than the limit", needs_landmarker=True)
    return cases


def run_in_process(case: Case) -> tuple[int, str]:
    """Run the case through the script's `main(argv)`; (exit code, stderr)."""
    import contextlib
    import importlib

    module = importlib.import_module(case.script)
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        try:
            code = module.main(case.args)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, stderr.getvalue()


def run_as_process(case: Case) -> tuple[int, str]:
    result = subprocess.run([sys.executable, str(REPO / f"{case.script}.py"), *case.args], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    return result.returncode, result.stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("error:", "failed:"))]


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import SHARED_FACES, write_adaface_checkpoint
    from synthetic_extraction import write_synthetic_extraction

    root = Path((argv or sys.argv[1:])[0]).resolve()
    if root.exists():
        shutil.rmtree(root)
    (root / "data").mkdir(parents=True)
    data = write_synthetic_extraction(root / "data")
    run_dir = train_tiny_run(data, root / "run")
    adaface = write_adaface_checkpoint(root / "adaface_ir18.ckpt")
    photo = SHARED_FACES / "obama" / "obama.jpg"
    cases = build_cases(root / "cases", data, run_dir, adaface, photo if photo.is_file() else None)
    print("| case | script | exit | expected | traceback | message |\n|---|---|---|---|---|---|")
    for name, case in cases.items():
        code, stderr = run_as_process(case)
        lines = error_lines(stderr)
        message = " / ".join(lines) if lines else stderr.strip()[-300:]
        print(f"| {name} | {case.script}.py | {code} | {case.exit_code} | {'YES' if 'Traceback' in stderr else 'no'} "
              f"| {message.replace('|', '/')} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
