"""The extraction script on real photos: outputs, bad files, resume, EXIF, several faces."""

import csv
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import cutout
import mark_comparison
import face_parts_extractor as extractor
from face_images import FaceLandmarkDetector, read_image
from net import adaface_input_tensor

SMALL = {"obama": ["obama.jpg", "obama2.jpg"], "franck": ["franck_01829.jpg", "franck_00010.png"],
         "messi": ["messi5.jpg"], "grace_hopper": ["grace_hopper.jpg"]}
CROP = 64


def run(dataset, dataset_dir, output, model, **kwargs):
    settings = extractor.ExtractionSettings(crop_size_px=kwargs.pop("crop", CROP))
    return extractor.extract_dataset(dataset, dataset_dir, output, settings, landmarker_model=model,
                                     progress=False, **kwargs)


def read_failures(output: Path) -> list[dict]:
    with open(output / extractor.FAILURES_REPORT) as handle:
        return list(csv.DictReader(handle))


def test_real_photos_give_every_output(copy_photos, landmarker_model, tmp_path):
    photos = copy_photos(SMALL)
    output = tmp_path / "out"
    code = extractor.main(["--image-folder", str(photos), "--output-dir", str(output),
                           "--crop-size", str(CROP), "--landmarker-model", str(landmarker_model),
                           "--no-progress"])
    assert code == extractor.EXIT_SOME_FAILED
    failures = read_failures(output)
    assert [(Path(f["path"]).name, f["reason"]) for f in failures] == [("messi5.jpg", "no face found")]

    parts_index = json.loads((output / extractor.PARTS_INDEX).read_text())
    tensor_index = json.loads((output / extractor.TENSOR_INDEX).read_text())
    assert sorted(parts_index) == ["franck", "grace_hopper", "obama"]
    assert {p: len(v) for p, v in tensor_index.items()} == {"franck": 2, "grace_hopper": 1, "obama": 2}
    for person, images in parts_index.items():
        for key, parts in images.items():
            assert list(parts) == list(cutout.PART_NAMES)
            for path in parts.values():
                crop = cv2.imread(str(output / path))  # relative to the index file's folder
                assert crop.shape == (CROP, CROP, 3)
            folder = output / Path(parts["nose"]).parent
            landmarks = np.load(folder / extractor.LANDMARKS_FILE)
            assert landmarks.shape == (478, 3) and landmarks.dtype == np.float32
            assert not np.allclose(landmarks[:, :2], np.round(landmarks[:, :2]))  # sub-pixel kept
            skin = cv2.imread(str(folder / f"{extractor.SKIN_FACE_NAME}.bmp"))  # the face's square, for marks
            assert skin.shape == (mark_comparison.SKIN_FACE_PX, mark_comparison.SKIN_FACE_PX, 3)
            inside = mark_comparison.landmarks_in_skin_face(landmarks)
            assert (inside > 0).all() and (inside < mark_comparison.SKIN_FACE_PX - 1).all()
    for person, paths in tensor_index.items():
        for path in paths:
            tensor = torch.load(output / path, weights_only=True)
            assert tensor.shape == (3, 112, 112) and tensor.dtype == torch.float32
            aligned_bgr = cv2.imread(str((output / path).parent / "aligned_face.bmp"))
            assert torch.equal(tensor, adaface_input_tensor(aligned_bgr))
    sheets = sorted(output.glob("contact_sheet_*.png"))
    assert len(sheets) == 1
    sheet = cv2.imread(str(sheets[0]))
    assert sheet.shape == (5 * extractor.CONTACT_THUMB_PX, 6 * extractor.CONTACT_THUMB_PX, 3)


def test_all_good_exit_status_is_zero(copy_photos, landmarker_model, tmp_path):
    photos = copy_photos({"obama": ["obama.jpg"]})
    code = extractor.main(["--image-folder", str(photos), "--output-dir", str(tmp_path / "out"),
                           "--crop-size", str(CROP), "--landmarker-model", str(landmarker_model),
                           "--no-progress", "--contact-sheet", "0"])
    assert code == extractor.EXIT_OK


def test_bad_files_are_reported_and_the_rest_extracted(shared_faces, landmarker_model, tmp_path):
    good = (shared_faces / "obama" / "obama2.jpg").read_bytes()
    png = io.BytesIO()
    Image.open(io.BytesIO(good)).save(png, format="PNG")
    files = {"empty.jpg": b"", "text.jpg": b"this is not an image\n" * 20,
             "truncated.jpg": good[: len(good) // 2], "truncated.png": png.getvalue()[:5000],
             "good.jpg": good}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "folder.jpg").mkdir()
    dataset = {"a": list(files) + ["missing.jpg", "folder.jpg"]}
    summary = run(dataset, tmp_path, tmp_path / "out", landmarker_model)
    reasons = {Path(path).name: reason for path, _, reason in summary.failures}
    assert reasons == {
        "empty.jpg": "empty file",
        "text.jpg": "not an image file (unrecognised format)",
        "truncated.jpg": reasons["truncated.jpg"], "truncated.png": reasons["truncated.png"],
        "missing.jpg": "file not found", "folder.jpg": "is a directory, not an image"}
    assert reasons["truncated.jpg"].startswith("truncated or corrupt image")
    assert reasons["truncated.png"].startswith("truncated or corrupt image")
    assert summary.extracted == 1 and summary.exit_status == extractor.EXIT_SOME_FAILED
    assert len(read_failures(tmp_path / "out")) == 6


def test_bad_dataset_file_is_a_clear_error(tmp_path, landmarker_model, capsys):
    bad = tmp_path / "jpg_dataset.json"
    bad.write_text('{"a": "not-a-list.jpg"}')
    code = extractor.main(["--jpg-dataset", str(bad), "--output-dir", str(tmp_path / "out"),
                           "--landmarker-model", str(landmarker_model)])
    assert code == extractor.EXIT_FATAL
    error = capsys.readouterr().err
    assert str(bad) in error and "'a'" in error and "list" in error


def test_missing_landmarker_is_a_clear_error(tmp_path, capsys):
    dataset = tmp_path / "jpg_dataset.json"
    dataset.write_text('{"a": []}')
    code = extractor.main(["--jpg-dataset", str(dataset), "--landmarker-model", str(tmp_path / "none.task"),
                           "--output-dir", str(tmp_path / "out")])
    assert code == extractor.EXIT_FATAL
    assert "fetch_models.py landmarker" in capsys.readouterr().err


def test_rerun_does_no_work_and_keeps_outputs(copy_photos, landmarker_model, tmp_path, monkeypatch):
    photos = copy_photos({"obama": ["obama.jpg", "obama2.jpg"]})
    dataset = extractor.dataset_from_folders(photos)
    first = run(dataset, photos, tmp_path / "out", landmarker_model)
    assert first.extracted == 2
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.bmp")}

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished photo was processed again")

    monkeypatch.setattr(extractor, "process_chunk", must_not_run)
    second = run(dataset, photos, tmp_path / "out", landmarker_model)
    assert (second.extracted, second.done_before, second.failures) == (0, 2, [])
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*.bmp")} == stamps
    index = json.loads((tmp_path / "out" / extractor.PARTS_INDEX).read_text())
    assert len(index["obama"]) == 2


def test_a_crash_mid_photo_leaves_nothing_that_looks_finished(copy_photos, landmarker_model, tmp_path,
                                                              monkeypatch):
    photos = copy_photos({"obama": ["obama.jpg", "obama2.jpg"]})
    dataset = extractor.dataset_from_folders(photos)
    real_write = extractor.write_face_outputs
    calls = []

    def write_then_die(folder, face, image_format):
        calls.append(folder)
        if len(calls) == 2:
            (folder / "left_eye.bmp").write_bytes(b"half")
            raise KeyboardInterrupt  # the process is stopped in the middle of the second photo
        real_write(folder, face, image_format)

    monkeypatch.setattr(extractor, "write_face_outputs", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(dataset, photos, tmp_path / "out", landmarker_model)
    person_dir = tmp_path / "out" / "obama"
    finished = [p for p in person_dir.iterdir() if not p.name.startswith(".")]
    assert len(finished) == 1  # the first photo survives, the second is not there at all
    index = json.loads((tmp_path / "out" / extractor.PARTS_INDEX).read_text())
    assert len(index["obama"]) == 1  # what finished before the interrupt is indexed

    # A temporary left by a killed process (no chance to clean up) is removed on rerun.
    (person_dir / ".obama2-x.tmp-abc").mkdir()
    monkeypatch.setattr(extractor, "write_face_outputs", real_write)
    summary = run(dataset, photos, tmp_path / "out", landmarker_model)
    assert (summary.extracted, summary.done_before) == (1, 1)
    assert sorted(p.name.startswith(".") for p in person_dir.iterdir()) == [False, False]


def test_same_file_names_for_two_people_do_not_collide(copy_photos, landmarker_model, tmp_path):
    photos = copy_photos({"obama": ["obama.jpg"], "franck": ["franck_01829.jpg"]})
    os.rename(photos / "obama" / "obama.jpg", photos / "obama" / "1.jpg")
    os.rename(photos / "franck" / "franck_01829.jpg", photos / "franck" / "1.jpg")
    dataset = {"p1": ["obama/1.jpg"], "p2": ["franck/1.jpg"]}
    summary = run(dataset, photos, tmp_path / "out", landmarker_model)
    assert summary.extracted == 2
    tensors = json.loads((tmp_path / "out" / extractor.TENSOR_INDEX).read_text())
    a, b = (torch.load(tmp_path / "out" / tensors[p][0], weights_only=True) for p in ("p1", "p2"))
    assert not torch.equal(a, b)


def test_changed_settings_are_refused(copy_photos, landmarker_model, tmp_path):
    photos = copy_photos({"obama": ["obama.jpg"]})
    dataset = extractor.dataset_from_folders(photos)
    run(dataset, photos, tmp_path / "out", landmarker_model)
    with pytest.raises(extractor.DatasetFileError, match="crop_size"):
        run(dataset, photos, tmp_path / "out", landmarker_model, crop=96)


def test_exif_orientation_is_honoured(shared_faces, detector, tmp_path):
    upright = Image.open(shared_faces / "obama" / "obama2.jpg").convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # pixels stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    stored.save(tmp_path / "sideways.jpg", exif=exif, quality=95)
    decoded = read_image(tmp_path / "sideways.jpg")
    assert decoded.shape[:2] == (upright.height, upright.width)
    landmarks = detector.detect_largest(decoded)
    reference = detector.detect_largest(np.asarray(upright))
    assert np.abs(landmarks[:, :2] - reference[:, :2]).mean() < 3.0


def test_largest_of_several_faces_is_used(shared_faces, detector):
    big = read_image(shared_faces / "obama" / "obama2.jpg")
    small = cv2.resize(read_image(shared_faces / "franck" / "franck_01829.jpg"), None, fx=0.5, fy=0.5)
    canvas = np.full((max(big.shape[0], small.shape[0]), big.shape[1] + small.shape[1], 3), 128, np.uint8)
    canvas[:small.shape[0], :small.shape[1]] = small
    canvas[:big.shape[0], small.shape[1]:] = big
    assert len(detector.detect_all(canvas)) == 2
    chosen = detector.detect_largest(canvas)
    assert chosen[:, 0].min() > small.shape[1]  # the face in the bigger photo


def test_photos_with_several_faces_are_listed_with_their_count(shared_faces, landmarker_model, tmp_path, capsys):
    """The largest face is used, and the report says so for that photo, also after a rerun."""
    big = read_image(shared_faces / "obama" / "obama2.jpg")
    small = cv2.resize(read_image(shared_faces / "franck" / "franck_01829.jpg"), None, fx=0.5, fy=0.5)
    canvas = np.full((max(big.shape[0], small.shape[0]), big.shape[1] + small.shape[1], 3), 128, np.uint8)
    canvas[:small.shape[0], :small.shape[1]] = small
    canvas[:big.shape[0], small.shape[1]:] = big
    (tmp_path / "photos" / "obama").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "photos" / "obama" / "two_faces.jpg"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(tmp_path / "photos" / "obama" / "one_face.jpg"), cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    arguments = ["--image-folder", str(tmp_path / "photos"), "--output-dir", str(tmp_path / "out"), "--crop-size",
                 str(CROP), "--landmarker-model", str(landmarker_model), "--no-progress", "--contact-sheet", "0"]
    for attempt in range(2):  # the second run skips both photos but still reports the first
        assert extractor.main(arguments) == extractor.EXIT_OK
        with open(tmp_path / "out" / extractor.WARNINGS_REPORT, newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert [(Path(r["path"]).name, r["person"], r["faces"]) for r in rows] == [("two_faces.jpg", "obama", "2")]
        assert "largest" in rows[0]["warning"]
        assert "1 photos show several faces" in capsys.readouterr().err


def test_two_workers_match_one(copy_photos, landmarker_model, tmp_path):
    photos = copy_photos({"obama": ["obama.jpg", "obama2.jpg"], "franck": ["franck_01829.jpg"]})
    dataset = extractor.dataset_from_folders(photos)
    run(dataset, photos, tmp_path / "one", landmarker_model, workers=1)
    run(dataset, photos, tmp_path / "two", landmarker_model, workers=2)
    index_one = json.loads((tmp_path / "one" / extractor.PARTS_INDEX).read_text())
    assert index_one == json.loads((tmp_path / "two" / extractor.PARTS_INDEX).read_text())
    for images in index_one.values():
        for parts in images.values():
            for path in parts.values():
                assert (tmp_path / "one" / path).read_bytes() == (tmp_path / "two" / path).read_bytes()


def test_detector_context_closes(landmarker_model):
    with FaceLandmarkDetector(landmarker_model) as detector:
        assert detector.detect_all(np.zeros((64, 64, 3), np.uint8)) == []


def test_extraction_does_without_torch(copy_photos, landmarker_model, tmp_path):
    """Workers write `adaface_input.pt` without importing torch (1.3 s and a few hundred MB each)."""
    import subprocess
    import sys

    photos = copy_photos({"obama": ["obama.jpg"]})
    script = ("import sys, face_parts_extractor as e; from pathlib import Path\n"
              f"s = e.extract_dataset(e.dataset_from_folders(Path({str(photos)!r})), Path('/'), "
              f"Path({str(tmp_path / 'out')!r}), e.ExtractionSettings(crop_size_px=32), "
              f"landmarker_model=Path({str(landmarker_model)!r}), progress=False)\n"
              "print(s.extracted, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], cwd=Path(extractor.__file__).parent,
                            capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["1", "False"]
    tensor_path, = json.loads((tmp_path / "out" / extractor.TENSOR_INDEX).read_text())["obama"]
    aligned_bgr = cv2.imread(str((tmp_path / "out" / tensor_path).parent / "aligned_face.bmp"))
    assert torch.equal(torch.load(tmp_path / "out" / tensor_path, weights_only=True),
                       adaface_input_tensor(aligned_bgr))


def test_adaface_input_is_adafaces_own_arithmetic_for_every_value():
    bgr = np.resize(np.arange(256, dtype=np.uint8), (112, 112, 3))
    expected = np.moveaxis(((bgr / 255.0) - 0.5) / 0.5, -1, 0).astype(np.float32)
    assert np.array_equal(adaface_input_tensor(bgr).numpy(), expected)


def test_workers_keep_freed_memory_where_the_c_library_is_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert extractor.keep_freed_memory() is True


@pytest.mark.parametrize("height, width", [(224, 224), (7, 5), (3, 6), (1, 7), (320, 320)])
def test_bmp_files_are_the_encoders_bytes(tmp_path, height, width):
    image = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path = tmp_path / "x.bmp"
    extractor.write_image(path, image, "bmp")
    assert path.read_bytes() == cv2.imencode(".bmp", image)[1].tobytes()
    assert np.array_equal(cv2.imread(str(path)), image)
    non_contiguous = np.ascontiguousarray(image[:, :, ::-1])[:, :, ::-1]
    extractor.write_image(path, non_contiguous, "bmp")
    assert path.read_bytes() == cv2.imencode(".bmp", image)[1].tobytes()
