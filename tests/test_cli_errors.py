"""One error path for every script: one line and a documented exit code for bad input; a locked
run folder; splits checked on every load; non-finite values refused; 16-bit photos; --help."""

import errno
import importlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import atomic_files
import cli_errors
from bad_input_table import REPO, build_cases, copy_data, face_png_with_huge_header, run_in_process
from conftest import tiny_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPTS = sorted(p.stem for p in REPO.glob("*.py") if "\ndef main(" in p.read_text())
CASE_NAMES = [
    "train: index file is a list", "train: a part path is a number", "train: truncated adaface_input.pt",
    "train: truncated latest.pth", "train: empty latest.pth", "train: best.pth copied over latest.pth",
    "train: split.json without 'test'", "train: split.json is a list", "train: split.json: an identity in train and val",
    "train: split.json: twins in different splits", "train: split names an identity with no images left",
    "evaluate: split.json with an identity in train and val", "train: --output-dir is a file",
    "train: --log-every-steps 0", "train: --device tpu", "train: --embedding-dim 0", "train: --batch-size 0",
    "train: AdaFace file is garbage",
    "evaluate: truncated checkpoint", "evaluate: empty checkpoint", "evaluate: wrong_shape checkpoint",
    "evaluate: malicious checkpoint", "evaluate: nan checkpoint", "evaluate: adaface_gone checkpoint",
    "evaluate: --device tpu",
    "export_onnx: truncated checkpoint", "export_onnx: nan checkpoint", "export_onnx: adaface_gone checkpoint",
    "inference: nan checkpoint", "inference: truncated checkpoint", "inference: adaface_gone checkpoint",
    "inference: a 14000×14000 photo", "inference: --device tpu",
    "inference: --embed over bad photos keeps the old output",
    "extractor: --jpg-dataset is a folder", "extractor: corrupt extraction.json", "extractor: --output-dir is a file",
    "extractor: a 14000×14000 photo",
]


@pytest.fixture(scope="module")
def tiny_run(synthetic_data, tmp_path_factory):
    from train_twin_verification import run_training

    output = tmp_path_factory.mktemp("cli_run")
    run_training(tiny_train_config(synthetic_data, output, num_epochs=1))
    return output


@pytest.fixture(scope="module")
def table(synthetic_data, tiny_run, adaface_file, tmp_path_factory, shared_faces):
    return build_cases(tmp_path_factory.mktemp("bad_inputs"), synthetic_data, tiny_run, adaface_file,
                       shared_faces / "obama" / "obama.jpg")


def test_the_table_lists_every_case(table):
    assert sorted(table) == sorted(CASE_NAMES)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_line_with_its_exit_code(name, table, landmarker_model):
    case = table[name]
    code, stderr = run_in_process(case)  # an unexpected error would raise here, with its traceback
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == case.exit_code, stderr
    if case.exit_code != cli_errors.EXIT_SOME_FAILED:
        assert len(errors) == 1, stderr
    assert case.needle in stderr, stderr


def test_embed_over_bad_photos_leaves_the_old_file(table, landmarker_model):
    case = table["inference: --embed over bad photos keeps the old output"]
    output = Path(case.args[case.args.index("-o") + 1])
    before = output.read_bytes()
    run_in_process(case)
    assert output.read_bytes() == before and len(np.load(output)["paths"]) == 4


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_works_for_every_script(script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(script).main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage:" in text
    if script in ("train_twin_verification", "evaluate", "inference", "export_onnx"):
        assert "--trust-checkpoint" in text  # the AdaFace loader's advice names this flag


def test_every_script_main_uses_the_shared_error_path():
    for script in SCRIPTS:
        assert getattr(importlib.import_module(script).main, "__wrapped__", None) is not None, script


def test_unexpected_errors_keep_their_traceback():
    @cli_errors.cli_main
    def broken(argv=None):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        broken([])


def test_a_full_disk_names_the_file(synthetic_data, tmp_path, monkeypatch, capsys):
    import train_twin_verification as train

    def no_space(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic_files.os, "fsync", no_space)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_train_config(synthetic_data, tmp_path / "run").to_dict()))
    code = train.main(["--config", str(config)])
    error = capsys.readouterr().err
    assert code == cli_errors.EXIT_ERROR and "Traceback" not in error
    assert str(tmp_path / "run") in error and "no space left" in error


def test_a_full_disk_during_extraction_names_the_folder(copy_photos, landmarker_model, tmp_path, monkeypatch, capsys):
    import face_parts_extractor as extractor

    photos = copy_photos({"obama": ["obama.jpg"]})

    def no_space(path, image, image_format):  # the first of a photo's files
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(extractor, "write_image", no_space)
    code = extractor.main(["--image-folder", str(photos), "--output-dir", str(tmp_path / "out"), "--no-progress",
                           "--landmarker-model", str(landmarker_model)])
    error = capsys.readouterr().err
    assert code == cli_errors.EXIT_ERROR and "no space left" in error and str(tmp_path / "out" / "obama") in error


def test_a_read_only_folder_names_it(tmp_path, monkeypatch):
    def refused(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path.parent / ".x.tmp-1"))

    monkeypatch.setattr(atomic_files, "temporary_sibling", refused)
    with pytest.raises(PermissionError) as error:
        atomic_files.write_text_atomic(tmp_path / "a.json", "{}")
    assert cli_errors.error_message(error.value) == (f"{tmp_path}: permission denied", cli_errors.EXIT_ERROR)


def test_a_worker_traceback_becomes_its_last_line():
    text = ("Caught DataIndexError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            '  File "x.py", line 1, in f\ntriplet_dataset.DataIndexError: a.pt: unreadable\n')
    assert cli_errors.one_line(text) == "a.pt: unreadable"


# ---- one run, one folder ------------------------------------------------------------------------------

def _train_command(config: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train_twin_verification.py"), "--config", str(config),
            "--output-dir", str(output), *extra]


def test_a_second_training_process_is_refused_and_a_killed_one_never_blocks(synthetic_data, tmp_path):
    config = tmp_path / "tiny.json"
    values = tiny_train_config(synthetic_data, tmp_path / "unused", num_epochs=500, early_stopping_patience=0)
    config.write_text(json.dumps({k: v for k, v in values.to_dict().items() if k != "output_dir"}))
    output = tmp_path / "run"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(_train_command(config, output, "--learning-rate", "0.003"), cwd=REPO, env=environment,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (output / "checkpoints" / "latest.pth").exists():  # the first has trained an epoch
            assert first.poll() is None, first.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.2)
        second = subprocess.run(_train_command(config, output, "--learning-rate", "0.1"), cwd=REPO, env=environment,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == cli_errors.EXIT_BUSY, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"process {first.pid}" in lines[0] and str(output) in lines[0]
    finally:
        first.kill()
        first.wait()
    assert json.loads((output / "config.json").read_text())["learning_rate"] == 0.003  # never mixed
    third = subprocess.run(_train_command(config, output, "--learning-rate", "0.003", "--stop-after-epochs", "1"),
                           cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr  # the killed holder's lock died with it
    assert "resuming from" in third.stdout


def test_a_renamed_moved_or_differently_spelled_run_folder_resumes(synthetic_data, tmp_path, monkeypatch):
    from train_twin_verification import run_training

    first = tmp_path / "first"
    run_training(tiny_train_config(synthetic_data, first, num_epochs=3, stop_after_epochs=1))
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(first, moved)
    monkeypatch.chdir(tmp_path)
    state = run_training(tiny_train_config(synthetic_data, "elsewhere/moved/", num_epochs=3,
                                           stop_after_epochs=1))
    assert state["epoch"] == 2
    state = run_training(tiny_train_config(synthetic_data, "elsewhere/./moved/", num_epochs=3, stop_after_epochs=1))
    assert state["epoch"] == 3 and state["finished"]


# ---- splits and caches ----------------------------------------------------------------------------------

def test_re_extraction_into_the_same_paths_renews_the_embedding_cache(synthetic_data, tmp_path, monkeypatch):
    import distributed
    import model_runner
    from train_twin_verification import global_cache
    from triplet_dataset import FaceDataIndex

    data = copy_data(synthetic_data, tmp_path / "data")
    config = tiny_train_config(data, tmp_path / "run")
    index = FaceDataIndex.load(data["face_parts_dataset_path"], data["tensor_dataset_path"], data["twin_pairs_path"])
    model = model_runner.build_model(config)
    calls = []
    real = model_runner.global_embeddings
    monkeypatch.setattr(model_runner, "global_embeddings", lambda *a, **k: calls.append(1) or real(*a, **k))
    context = distributed.Context()
    (tmp_path / "cache").mkdir()
    global_cache(model, index, config, context, tmp_path / "cache")
    global_cache(model, index, config, context, tmp_path / "cache")
    assert len(calls) == 1
    tensor = index.images[0].tensor_path
    tensor.write_bytes(tensor.read_bytes())  # re-extracted: same path, new file
    os.utime(tensor, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    global_cache(model, index, config, context, tmp_path / "cache")
    assert len(calls) == 2


# ---- non-finite values -------------------------------------------------------------------------------

def test_nan_embeddings_never_become_a_decision(tmp_path, tiny_run, landmarker_model, shared_faces):
    import inference

    with inference.TwinVerifier.from_checkpoint(tiny_run / "checkpoints" / "best.pth",
                                                landmarker_model=landmarker_model) as verifier:
        with torch.no_grad():
            # a weight of the part encoders, which every decision embedding depends on
            next(verifier.model.face_parts.parameters()).fill_(float("nan"))
        photo = shared_faces / "obama" / "obama.jpg"
        with pytest.raises(inference.NonFiniteEmbeddingError, match="NaN"):
            verifier.verify(photo, photo)


def test_nan_is_the_worst_parity_difference():
    import export_onnx

    assert math.isnan(export_onnx.worse(0.0, math.nan)) and math.isnan(export_onnx.worse(math.nan, 1e-6))
    assert export_onnx.worse(1e-6, 2e-6) == 2e-6


def test_config_values_that_cannot_train_are_refused_when_parsed():
    from train_config import ConfigError, parse_config

    for flags, key in ((["--hidden-dim", "-1"], "hidden_dim"), (["--log-every-steps", "0"], "log_every_steps"),
                       (["--device", "tpu"], "device"), (["--face-parts-embedding-dim", "0"], "face_parts_embedding_dim"),
                       (["--num-workers", "-1"], "num_workers"), (["--learning-rate", "nan"], "learning_rate")):
        with pytest.raises(ConfigError, match=key):
            parse_config(flags)
    assert parse_config(["--device", "cuda:1", "--trust-checkpoint"]).trust_checkpoint


# ---- image decoding ------------------------------------------------------------------------------------

def test_a_16_bit_grayscale_photo_is_scaled_and_its_face_found(shared_faces, detector, tmp_path):
    from face_images import read_image

    grey = np.asarray(Image.open(shared_faces / "obama" / "obama.jpg").convert("L"), dtype=np.uint16) * 257
    path = tmp_path / "face16.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = read_image(path)
    assert rgb.dtype == np.uint8 and abs(float(rgb.mean()) - float(grey.mean()) / 257) < 1
    assert len(detector.detect_all(rgb)) == 1


def test_a_float_image_in_0_1_is_scaled_to_8_bits():
    from face_images import decode_image_bytes

    values = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    buffer = io.BytesIO()
    Image.fromarray(values, mode="F").save(buffer, "TIFF")
    rgb = decode_image_bytes(buffer.getvalue())
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255


def test_the_pixel_limit_is_checked_before_decoding_and_is_a_setting(tmp_path):
    from face_images import ImageDecodeError, decode_image_bytes

    data = face_png_with_huge_header(tmp_path / "huge.png").read_bytes()
    with pytest.raises(ImageDecodeError, match="196,000,000 pixels"):
        decode_image_bytes(data, "huge.png")
    with pytest.raises(ImageDecodeError, match="more than the limit of 10"):
        decode_image_bytes(face_png_with_huge_header(tmp_path / "small.png", 8, 8).read_bytes(), "x", max_pixels=10)


def test_evaluation_refuses_nan_embeddings(synthetic_data, tmp_path):
    import distributed
    import evaluate
    import model_runner
    from triplet_dataset import FaceDataIndex

    config = tiny_train_config(synthetic_data, tmp_path / "run")
    index = FaceDataIndex.load(*(synthetic_data[k] for k in ("face_parts_dataset_path", "tensor_dataset_path",
                                                             "twin_pairs_path")))
    model = model_runner.build_model(config)
    with torch.no_grad():
        next(model.face_parts.parameters()).fill_(float("nan"))  # every decision embedding depends on it
    global_all = torch.nn.functional.normalize(torch.randn(len(index.images), 512), dim=1)
    with pytest.raises(evaluate.NonFiniteScoresError, match="combined model gives NaN"):
        evaluate.split_embeddings(model, index, index.persons[:4], global_all, config, distributed.Context())
