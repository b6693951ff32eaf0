"""evaluate.py end to end on a tiny trained model; its numbers reproduced from its CSV."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

import evaluate
import train_twin_verification as train
from conftest import tiny_train_config


@pytest.fixture(scope="module")
def trained(synthetic_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("eval_run")
    train.run_training(tiny_train_config(synthetic_data, output, num_epochs=2, train_split=0.4, test_split=0.4))
    return output / "checkpoints" / "best.pth"


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory):
    output = tmp_path_factory.mktemp("evaluation")
    code = evaluate.main(["--checkpoint", str(trained), "--output-dir", str(output), "--bootstrap", "50",
                          "--workers", "0", "--no-progress"])
    assert code == 0
    return output, json.loads((output / "report.json").read_text())


def independent_eer(scores: np.ndarray, genuine: np.ndarray) -> float:
    """EER from sklearn's ROC, interpolating FAR and FRR linearly where they cross."""
    far, tar, _ = roc_curve(genuine, scores, drop_intermediate=False)
    frr = 1 - tar
    k = int(np.argmax(far >= frr))
    if k == 0 or far[k] == frr[k]:
        return float(far[k])
    d0, d1 = far[k - 1] - frr[k - 1], far[k] - frr[k]
    t = d0 / (d0 - d1)
    return float(far[k - 1] + t * (far[k] - far[k - 1]))


def test_all_outputs_are_written(evaluated, capsys):
    output, report = evaluated
    for name in ("report.json", "pairs.csv", "roc.png", "score_histograms.png"):
        assert (output / name).stat().st_size > 0, name
    assert set(report["models"]) == {"combined", "adaface", "marks"}  # the synthetic run compares marks
    assert report["models"]["marks"]["label"].startswith("mark comparison alone")
    label = "global alone: UNTRAINED IR-18 (random weights)"  # the global model, named
    assert report["models"]["adaface"]["label"] == label and label in evaluate.summary_table(report)
    assert report["global_branch"] == "UNTRAINED IR-18 (random weights)"
    for model in report["models"].values():
        for kind in ("twin", "general", "all"):
            entry = model["test"][kind]
            assert {"eer", "eer_threshold", "auc", "tar_at_far", "accuracy"} <= set(entry)
            assert set(entry["tar_at_far"]) == {"1e-01", "1e-02", "1e-03"}
        assert model["bootstrap"]["twin"]["eer"]["low"] <= model["test"]["twin"]["eer"] + 1e-9


def test_numbers_are_reproduced_from_the_csv(evaluated):
    output, report = evaluated
    with open(output / "pairs.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(r["kind"] == "genuine" for r in rows) == report["pairs"]["genuine"]
    assert sum(r["kind"] == "twin" for r in rows) == report["pairs"]["twin"]
    columns = {"combined": "score_combined", "adaface": "score_global", "marks": "score_marks"}
    for model, column in columns.items():
        scores = np.array([float(r[column]) for r in rows])
        kinds = np.array([r["kind"] for r in rows])
        for kind, selected in (("twin", kinds != "general"), ("general", kinds != "twin"),
                               ("all", np.ones(len(rows), bool))):
            genuine = (kinds[selected] == "genuine").astype(int)
            expected = report["models"][model]["test"][kind]
            assert independent_eer(scores[selected], genuine) == pytest.approx(expected["eer"], abs=1e-3)
            assert roc_auc_score(genuine, scores[selected]) == pytest.approx(expected["auc"], abs=1e-3)
            accepted = scores[selected] >= report["models"][model]["threshold"]
            assert (accepted == genuine).mean() == pytest.approx(expected["accuracy"], abs=1e-6)
            assert accepted[genuine == 0].mean() == pytest.approx(expected["far_at_threshold"], abs=1e-6)
            assert accepted[genuine == 1].mean() == pytest.approx(expected["tar_at_threshold"], abs=1e-6)


def test_threshold_comes_from_validation_and_is_stored(trained, evaluated):
    _, report = evaluated
    assert report["threshold_source"].startswith("chosen on")
    checkpoint = torch.load(trained, weights_only=True)
    assert checkpoint["threshold"] == pytest.approx(report["models"]["combined"]["threshold"])
    assert "validation" in checkpoint["threshold_rule"]
    for model in ("combined", "adaface"):  # the twin rule, at the training run's target
        assert report["models"][model]["threshold_rule"].startswith("twin FAR <= 0.01 on ")
    assert checkpoint["threshold_rule"] == report["models"]["combined"]["threshold_rule"] + " (evaluate.py)"


def test_the_table_shows_accuracy_and_far_at_the_threshold_per_impostor_kind(evaluated):
    _, report = evaluated
    table = evaluate.summary_table(report).splitlines()
    assert "accuracy" in table[0] and "FAR" in table[0]
    for line in table[1:]:
        assert line.count("%") >= 4, line  # EER, its interval, accuracy, FAR


def test_a_photo_dataset_is_extracted_and_scored(trained, copy_photos, landmarker_model, tmp_path):
    photos = copy_photos({"obama": ["obama.jpg", "obama2.jpg", "obama3.jpg"],
                          "franck": ["franck_01829.jpg", "franck_02045.jpg"],
                          "clm_author": ["cap12_edit_00010.png", "cap12_edit_00449.png"],
                          "messi": ["messi5.jpg"]})
    dataset = {p: [f"{p}/{f.name}" for f in sorted((photos / p).iterdir())] for p in
               ("obama", "franck", "clm_author", "messi")}
    (photos / "jpg_dataset.json").write_text(json.dumps(dataset))
    (photos / "twin_pairs.json").write_text(json.dumps([["franck", "clm_author"]]))
    report = evaluate.evaluate(trained, tmp_path / "out", photos / "jpg_dataset.json", photos / "twin_pairs.json",
                               bootstrap=0, workers=0, progress=False)
    assert report["threshold_source"].startswith("stored in the checkpoint")
    assert report["test_identities"] == 3  # messi has no face and drops out
    assert report["pairs"] == {"genuine": 3 + 1 + 1, "twin": 4, "general": 12}
    assert (tmp_path / "out" / "extracted" / "failures.csv").read_text().count("messi5.jpg") == 1


def test_a_run_started_with_relative_paths_evaluates_from_any_folder(synthetic_data, tmp_path, monkeypatch):
    """Dataset paths and the run folder are stored absolute, so evaluate.py (which reads the
    dataset through the checkpoint's config) works from another folder, and so does resuming."""
    monkeypatch.chdir(tmp_path)
    relative = {key: os.path.relpath(path, tmp_path) for key, path in synthetic_data.items()}
    config = tiny_train_config(relative, Path("run"), num_epochs=1, train_split=0.4, test_split=0.4)
    train.run_training(config)
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pth", weights_only=True)
    for key in ("face_parts_dataset_path", "tensor_dataset_path", "twin_pairs_path", "output_dir"):
        assert Path(best["config"][key]).is_absolute(), key
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    report = evaluate.evaluate(tmp_path / "run" / "checkpoints" / "best.pth", tmp_path / "evaluation",
                               bootstrap=0, workers=0, progress=False, store_threshold=False)
    assert report["test_identities"] >= 2 and report["pairs"]["genuine"] > 0
    monkeypatch.chdir(tmp_path)
    assert train.run_training(config)["finished"]  # the same relative command still resumes


@pytest.mark.parametrize("decision", ["both", "parts", "combined"])
def test_the_twin_model_is_scored_behind_the_recogniser_gate_training_chose(synthetic_data, tmp_path, decision):
    """Training and evaluation set the gate by one rule on the same validation pairs (two families
    here, so there are general impostors); every test pair below it, and only those, scores below −1.
    Whichever embedding is compared."""
    import verification_pairs as vp

    run = tmp_path / "run"
    train.run_training(tiny_train_config(synthetic_data, run, num_epochs=1, train_split=0.2, test_split=0.4,
                                         decision_embedding=decision))
    trained, output = run / "checkpoints" / "best.pth", tmp_path / "evaluation"
    report = evaluate.evaluate(trained, output, bootstrap=0, workers=0, progress=False)
    stored = torch.load(trained, weights_only=True)["recogniser_gate"]
    assert isinstance(stored, float) and report["recogniser_gate"] == pytest.approx(stored)
    label = report["models"]["combined"]["label"]
    expected = {"both": "twin model (parts and projection, behind the gate of ",
                "parts": "twin model (parts, behind the gate of "}
    weight, mark_weight = (torch.load(trained, weights_only=True)[k] for k in ("recogniser_weight", "mark_weight"))
    assert report["recogniser_weight"] == pytest.approx(weight)  # one rule, the same validation pairs
    assert report["mark_weight"] == pytest.approx(mark_weight)
    assert (label.startswith(expected[decision]) if decision in expected
            else " + parts, behind its gate" in label), label
    weights = (f"; recogniser weight {weight:.2f}" if weight else "") + (
        f"; mark weight {mark_weight:.2f}" if mark_weight else "")
    assert label.endswith(f"{weights})" if weights else "gate)"), label
    with open(output / "pairs.csv") as handle:
        rows = list(csv.DictReader(handle))
    combined = np.array([float(r["score_combined"]) for r in rows])
    recogniser = np.array([float(r["score_global"]) for r in rows])
    assert ((combined < -1) == (recogniser < stored)).all() and (combined < -1).any()
    assert combined.min() >= -1 - vp.GATED_OFFSET


def test_a_given_recogniser_weight_mixes_the_recognisers_similarity_into_every_score(synthetic_data, tmp_path):
    """At weight 1 the decision score is the recogniser's similarity (behind its gate); training's
    threshold and evaluation's come from those scores alike."""
    run = tmp_path / "run"
    train.run_training(tiny_train_config(synthetic_data, run, num_epochs=1, train_split=0.2, test_split=0.4,
                                         recogniser_weight="1", mark_weight="0"))
    trained = run / "checkpoints" / "best.pth"
    saved = torch.load(trained, weights_only=True)
    assert saved["recogniser_weight"] == 1.0
    row = json.loads((run / "logs" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= row["twin_model_twin_eer"] <= 1 and 0 <= row["twin_model_general_eer"] <= 1  # the twin model by itself
    report = evaluate.evaluate(trained, tmp_path / "evaluation", bootstrap=0, workers=0, progress=False)
    assert report["recogniser_weight"] == 1.0
    assert report["models"]["combined"]["label"].endswith("; recogniser weight 1.00)")
    with open(tmp_path / "evaluation" / "pairs.csv") as handle:
        rows = list(csv.DictReader(handle))
    combined = np.array([float(r["score_combined"]) for r in rows])
    recogniser = np.array([float(r["score_global"]) for r in rows])
    passed = combined >= -1
    np.testing.assert_allclose(combined[passed], recogniser[passed], atol=1e-5)
    for kind in ("twin", "general"):
        assert (report["models"]["combined"]["test"][kind]["eer"]
                == pytest.approx(report["models"]["adaface"]["test"][kind]["eer"], abs=0.02))


def test_runs_from_before_the_gate_resume_without_it(tmp_path):
    from dataclasses import replace

    from train_config import ConfigError, TrainConfig

    config = TrainConfig().with_absolute_data_paths()
    saved = {k: v for k, v in config.to_dict().items() if k != "recogniser_gate"}
    train.check_resumable(saved, replace(config, recogniser_gate=0.0), tmp_path / "latest.pth")
    with pytest.raises(ConfigError, match="recogniser_gate: 0.0 → 0.01"):
        train.check_resumable(saved, config, tmp_path / "latest.pth")


def test_each_twin_family_gets_its_own_twin_eer():
    import verification_pairs as vp
    g, t, x = vp.GENUINE, vp.TWIN, vp.GENERAL
    # a+b: every genuine pair above every twin pair; c+d: the same scores for both kinds; e: no twin.
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.5, 0.6, 0.5, 0.6, 0.7, 0.95])
    kind = np.array([g, g, t, t, g, g, t, t, g, x])
    family_a = np.array(["a+b"] * 4 + ["c+d"] * 4 + ["e", "a+b"])
    family_b = np.array(["a+b"] * 4 + ["c+d"] * 4 + ["e", "e"])
    result = evaluate.twin_eer_by_family(scores, kind, family_a, family_b)
    assert set(result["families"]) == {"a+b", "c+d"}  # e has no twin; the general pair counts nowhere
    first, second = result["families"]["a+b"], result["families"]["c+d"]
    assert first["eer"] == 0.0 and second["eer"] == pytest.approx(0.5)
    assert (first["genuine_pairs"], first["twin_pairs"]) == (2, 2)
    assert first["genuine_mean"] == pytest.approx(0.85) and first["twin_mean"] == pytest.approx(0.25)
    assert result["median_eer"] == pytest.approx(0.25)


def test_the_per_family_twin_eer_is_reproduced_from_the_csv(evaluated, capsys):
    output, report = evaluated
    rows = [r for r in csv.DictReader(open(output / "pairs.csv")) if r["kind"] in ("genuine", "twin")]
    for model, column in (("combined", "score_combined"), ("adaface", "score_global")):
        families = report["by_family"][model]["families"]
        assert families, "the test split holds twin families"
        for family, entry in families.items():
            members = set(family.split("+"))
            chosen = [r for r in rows if r["person_a"] in members and r["person_b"] in members]
            genuine = np.array([r["kind"] == "genuine" for r in chosen]).astype(int)
            assert (genuine.sum(), len(genuine) - genuine.sum()) == (entry["genuine_pairs"], entry["twin_pairs"])
            scores = np.array([float(r[column]) for r in chosen])
            assert independent_eer(scores, genuine) == pytest.approx(entry["eer"], abs=1e-3)
    table = evaluate.family_table(report)
    assert all(family[:34] in table for family in report["by_family"]["combined"]["families"])
    assert "median over families" in table
