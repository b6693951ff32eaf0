"""Inference: embeddings of real photos, verification, the CLI, errors, and the AdaFace helpers.

The tiny model is trained on synthetic crops, so its decisions on real faces mean
nothing: the tests check that outputs are consistent, never which decision is made.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import inference
from conftest import tiny_train_config
from face_images import ImageDecodeError, NoFaceError, read_image
from net import adaface_input_tensor, load_adaface
from train_twin_verification import run_training


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoint(synthetic_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("inference_run")
    run_training(tiny_train_config(synthetic_data, output))
    return output / "checkpoints" / "best.pth"


@pytest.fixture(scope="module")
def verifier(checkpoint, landmarker_model):
    with inference.TwinVerifier.from_checkpoint(checkpoint, landmarker_model=landmarker_model) as instance:
        yield instance


@pytest.fixture(scope="module")
def photos(shared_faces):
    return {"obama": shared_faces / "obama" / "obama.jpg", "obama2": shared_faces / "obama" / "obama2.jpg",
            "franck": shared_faces / "franck" / "franck_00010.png", "messi": shared_faces / "messi" / "messi5.jpg"}


def test_embed_is_unit_length_and_a_path_equals_its_array(verifier, photos):
    embedding = verifier.embed(photos["obama"])
    assert embedding.shape == (verifier.model.decision_dim,) and embedding.dtype == np.float32
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)
    assert verifier.part_crop_size == 32
    np.testing.assert_array_equal(verifier.embed(read_image(photos["obama"])), embedding)


def test_embed_many_equals_one_by_one(verifier, photos):
    images = [photos["obama"], photos["franck"], read_image(photos["obama2"])]
    batched = verifier.embed_many(images, batch_size=2)
    single = np.stack([verifier.embed(image) for image in images])
    assert batched.shape == (3, verifier.model.decision_dim)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_verify_uses_the_stored_threshold(verifier, checkpoint, photos):
    saved = torch.load(checkpoint, weights_only=True)
    stored = saved["threshold"]
    result = verifier.verify(photos["obama"], photos["franck"])
    assert result.threshold == pytest.approx(stored) and "UNTRAINED" in result.global_branch
    assert result.threshold_rule == saved["threshold_rule"] and "twin FAR" in result.threshold_rule
    assert result.recogniser_gate == pytest.approx(saved["recogniser_gate"])
    assert result.same_person == (result.similarity >= result.threshold
                                  and result.recogniser_similarity >= result.recogniser_gate)
    expected = float(verifier.embed(photos["obama"]) @ verifier.embed(photos["franck"]))
    assert result.twin_similarity == pytest.approx(expected, abs=1e-5)
    weight, mark_weight = saved["recogniser_weight"], saved["mark_weight"]
    assert result.recogniser_weight == weight and result.mark_weight == mark_weight
    fused = (1 - weight) * expected + weight * result.recogniser_similarity
    if mark_weight:  # the synthetic twins differ by a skin mark too, which validation may pick up
        assert 0 < result.mark_similarity <= 1
        fused = (1 - mark_weight) * fused + mark_weight * result.mark_similarity
    else:
        assert result.mark_similarity is None
    assert result.similarity == pytest.approx(fused, abs=1e-5)
    assert verifier.similarity(photos["obama"], photos["obama"]) == pytest.approx(1.0, abs=1e-5)
    loose = verifier.verify(photos["obama"], photos["franck"], threshold=-1.0)
    assert loose.same_person == (loose.recogniser_similarity >= loose.recogniser_gate)


def test_the_recogniser_gate_turns_away_pairs_whatever_the_twin_model_says(checkpoint, landmarker_model, photos,
                                                                          tmp_path):
    saved = torch.load(checkpoint, weights_only=True)
    for gate, same in ((None, True), (-1.0, True), (1.01, False)):
        torch.save({**saved, "recogniser_gate": gate}, tmp_path / "gated.pth")
        with inference.TwinVerifier.from_checkpoint(tmp_path / "gated.pth", landmarker_model=landmarker_model) as one:
            result = one.verify(photos["obama"], photos["obama2"], threshold=-1.0)
            features = one.embed_faces_and_global([one.prepare(photos["obama"]), one.prepare(photos["obama2"])])[1]
        assert result.same_person == same and result.recogniser_gate == gate
        assert result.recogniser_similarity == pytest.approx(float(features[0] @ features[1]), abs=1e-5)
    torch.save({**saved, "recogniser_gate": float("nan")}, tmp_path / "gated.pth")
    with pytest.raises(inference.CheckpointMismatchError, match="recogniser_gate nan is not a finite number"):
        inference.load_twin_checkpoint(tmp_path / "gated.pth")


def test_the_recogniser_weight_mixes_the_recognisers_similarity_into_the_decision(checkpoint, landmarker_model,
                                                                                 photos, tmp_path):
    saved = torch.load(checkpoint, weights_only=True)
    results = {}
    for weight in (0.0, 0.5, 1.0, None):  # None: a checkpoint from before the weight
        torch.save({**saved, "recogniser_weight": weight, "mark_weight": 0.0}, tmp_path / "weighted.pth")
        with inference.TwinVerifier.from_checkpoint(tmp_path / "weighted.pth",
                                                    landmarker_model=landmarker_model) as one:
            results[weight] = one.verify(photos["obama"], photos["franck"], threshold=0.0)
            assert one.similarity(photos["obama"], photos["franck"]) == pytest.approx(results[weight].similarity,
                                                                                      abs=1e-5)
    twin, recogniser = results[0.0].twin_similarity, results[0.0].recogniser_similarity
    assert results[0.0].similarity == pytest.approx(twin, abs=1e-6)
    assert results[None].similarity == pytest.approx(twin, abs=1e-6) and results[None].recogniser_weight == 0.0
    assert results[1.0].similarity == pytest.approx(recogniser, abs=1e-6)
    assert results[0.5].similarity == pytest.approx((twin + recogniser) / 2, abs=1e-6)
    torch.save({**saved, "recogniser_weight": float("inf")}, tmp_path / "weighted.pth")
    with pytest.raises(inference.CheckpointMismatchError, match="recogniser_weight inf is not a finite number"):
        inference.load_twin_checkpoint(tmp_path / "weighted.pth")


def test_the_mark_weight_mixes_the_mark_similarity_into_the_decision(checkpoint, landmarker_model, photos, tmp_path):
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["mark_comparison"]["scale"] > 0 and len(saved["mark_comparison"]["face"]["layout"]) == 478
    results = {}
    for name, changes in {"0": {"mark_weight": 0.0}, "0.5": {"mark_weight": 0.5}, "1": {"mark_weight": 1.0},
                          "before marks": {"mark_weight": None, "mark_comparison": None}}.items():
        torch.save({**saved, "recogniser_weight": 0.0, **changes}, tmp_path / "marks.pth")
        with inference.TwinVerifier.from_checkpoint(tmp_path / "marks.pth", landmarker_model=landmarker_model) as one:
            results[name] = one.verify(photos["obama"], photos["obama2"], threshold=0.0)
            assert one.similarity(photos["obama"], photos["obama2"]) == pytest.approx(results[name].similarity,
                                                                                    abs=1e-6)
            if name == "1":  # one photo against itself: no mark differs
                assert one.pair_similarities(photos["obama"], photos["obama"])[2] == pytest.approx(1.0)
    twin, marks = results["0.5"].twin_similarity, results["0.5"].mark_similarity
    assert 0 < marks < 1 and results["1"].mark_similarity == pytest.approx(marks)
    assert results["0"].mark_similarity is None and results["before marks"].mark_similarity is None
    assert results["0"].similarity == pytest.approx(twin, abs=1e-6) == results["before marks"].similarity
    assert results["1"].similarity == pytest.approx(marks, abs=1e-6)
    assert results["0.5"].similarity == pytest.approx((twin + marks) / 2, abs=1e-6)
    torch.save({**saved, "mark_weight": float("nan")}, tmp_path / "marks.pth")
    with pytest.raises(inference.CheckpointMismatchError, match="mark_weight nan is not a finite number"):
        inference.load_twin_checkpoint(tmp_path / "marks.pth")


def test_a_checkpoint_without_threshold_is_a_clear_error(checkpoint, landmarker_model, photos, tmp_path):
    saved = torch.load(checkpoint, weights_only=True)
    torch.save({**saved, "threshold": None}, tmp_path / "no_threshold.pth")
    with inference.TwinVerifier.from_checkpoint(tmp_path / "no_threshold.pth",
                                                landmarker_model=landmarker_model) as verifier:
        with pytest.raises(inference.NoThresholdError, match="no_threshold.pth.*threshold"):
            verifier.verify(photos["obama"], photos["obama2"])


def test_bad_photos_are_errors_naming_them(verifier, photos, tmp_path):
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(NoFaceError, match="messi5.jpg"):
        verifier.embed(photos["messi"])
    with pytest.raises(ImageDecodeError, match="missing.jpg"):
        verifier.embed(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError, match="corrupt.jpg"):
        verifier.embed(tmp_path / "corrupt.jpg")
    with pytest.raises(NoFaceError, match="messi5.jpg"):
        verifier.embed_many([photos["obama"], photos["messi"]])
    results = verifier.embed_each([photos["obama"], photos["messi"], tmp_path / "missing.jpg", photos["franck"]])
    assert results.ok == [0, 3] and results.embeddings.shape == (2, verifier.model.decision_dim)
    assert [(i, "messi5.jpg" in m or "missing.jpg" in m) for i, m in results.failures] == [(1, True), (2, True)]
    np.testing.assert_allclose(results.embeddings[1], verifier.embed(photos["franck"]), atol=1e-5)


def run_cli(capsys, *argv):
    status = inference.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_compares_two_photos(checkpoint, landmarker_model, photos, capsys):
    common = ("--checkpoint", checkpoint, "--landmarker-model", landmarker_model)
    status, out, _ = run_cli(capsys, photos["obama"], photos["obama2"], *common)
    assert status == 0
    values = dict(line.split(":", 1) for line in out.strip().splitlines())
    similarity, threshold = float(values["similarity"]), float(values["threshold"].split()[0])
    assert values["decision"].strip() == ("same person" if similarity >= threshold else "different people")

    status, out, _ = run_cli(capsys, photos["obama"], photos["obama2"], *common, "--json")
    result = json.loads(out)
    assert status == 0 and result["image_b"].endswith("obama2.jpg")
    assert result["similarity"] == pytest.approx(similarity, abs=1e-4)
    assert result["same_person"] == (result["similarity"] >= result["threshold"])
    assert "twin FAR" in result["threshold_rule"] and "twin FAR" in values["threshold"]
    assert result["decision"] == ("same person" if result["same_person"] else "different people")


def test_cli_errors_name_the_file(checkpoint, landmarker_model, photos, capsys, tmp_path):
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    common = ("--checkpoint", checkpoint, "--landmarker-model", landmarker_model)
    for bad in (photos["messi"], tmp_path / "missing.jpg", tmp_path / "corrupt.png"):
        status, out, err = run_cli(capsys, photos["obama"], bad, *common)
        assert status == 1 and out == ""
        assert err.startswith("error: ") and bad.name in err and len(err.strip().splitlines()) == 1
    status, _, err = run_cli(capsys, photos["obama"], photos["obama2"], "--checkpoint", tmp_path / "none.pth")
    assert status == 1 and "none.pth" in err
    with pytest.raises(SystemExit) as exit_info:
        inference.main(["only_one.jpg", "--checkpoint", str(checkpoint)])
    assert exit_info.value.code == 2


def test_cli_embeds_a_folder_and_reports_failures(checkpoint, landmarker_model, copy_photos, capsys, tmp_path):
    folder = copy_photos({"obama": ["obama.jpg", "obama2.jpg"], "messi": ["messi5.jpg"], "franck": ["franck_00010.png"]})
    (folder / "notes.txt").write_text("not a photo, not looked at")
    output = tmp_path / "out" / "embeddings.npz"
    status, out, err = run_cli(capsys, "--embed", folder, "-o", output, "--checkpoint", checkpoint,
                               "--landmarker-model", landmarker_model, "--batch-size", "2")
    assert status == 3 and "messi5.jpg" in err and "no face" in err
    with np.load(output) as saved:
        paths, embeddings = saved["paths"].tolist(), saved["embeddings"]
    assert paths == ["franck/franck_00010.png", "obama/obama.jpg", "obama/obama2.jpg"]
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert [p.name for p in output.parent.iterdir()] == ["embeddings.npz"]  # no temporaries left
    with inference.TwinVerifier.from_checkpoint(checkpoint, landmarker_model=landmarker_model) as verifier:
        np.testing.assert_allclose(embeddings[1], verifier.embed(folder / "obama" / "obama.jpg"), atol=1e-5)

    (folder / "messi" / "messi5.jpg").unlink()
    status, _, err = run_cli(capsys, "--embed", folder, "-o", output, "--checkpoint", checkpoint,
                             "--landmarker-model", landmarker_model)
    assert status == 0 and err == ""


def test_adaface_helpers_match_the_loader(adaface_file, monkeypatch):
    monkeypatch.setenv("TWIN_ADAFACE_CHECKPOINT", str(adaface_file))
    model = inference.load_pretrained_model("ir_18")
    assert not model.training
    bgr = np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    face = inference.to_input(Image.fromarray(np.ascontiguousarray(bgr[:, :, ::-1])))
    torch.testing.assert_close(face, adaface_input_tensor(bgr)[None], rtol=0, atol=0)
    feature, norm = inference.adaface_feature(model, face)
    with torch.no_grad():
        expected, expected_norm = load_adaface(adaface_file, "ir_18")(adaface_input_tensor(bgr)[None])
    torch.testing.assert_close(feature, expected)
    torch.testing.assert_close(norm, expected_norm)
    assert feature.shape == (1, 512) and norm.shape == (1, 1)


def readme_python_block(containing: str) -> str:
    from conftest import REPO

    text = (REPO / "README.md").read_text()
    blocks = [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]
    return next(block for block in blocks if containing in block)


def test_readme_inference_snippet_runs_as_written(checkpoint, photos, landmarker_model, monkeypatch, tmp_path):
    code = readme_python_block("TwinVerifier")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "twin_verification_training" / "checkpoints").mkdir(parents=True)
    (tmp_path / "twin_verification_training" / "checkpoints" / "best.pth").write_bytes(checkpoint.read_bytes())
    for name, source in (("a.jpg", photos["obama"]), ("b.jpg", photos["obama2"]), ("c.jpg", photos["franck"])):
        (tmp_path / name).write_bytes(source.read_bytes())
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["embeddings"].shape == (3, 5 * 16 + 16)  # the part embeddings and the projection
    assert namespace["result"].same_person == (namespace["result"].similarity >= namespace["result"].threshold)
