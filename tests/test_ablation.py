"""The ablation: recipes trained on the same data for about the same number of images, one table."""

import json

import pytest

import ablation
from demo_data import DemoData


@pytest.fixture
def tiny_ablation(tmp_path, monkeypatch, one_torch_thread):
    from synthetic_extraction import write_synthetic_extraction

    folder = tmp_path / "data"
    write_synthetic_extraction(folder, families=8, images_per_person=3)  # test families: two pairs
    data = DemoData("synthetic", folder, folder, photos=51, failures=0)
    monkeypatch.setattr(ablation, "prepare_demo_data", lambda *args, **kwargs: data)
    monkeypatch.setattr(ablation, "CPU_SIZED", {**ablation.CPU_SIZED, "face_parts_embedding_dim": 8, "hidden_dim": 16,
                                                "embedding_dim": 8, "adaface_arch": "ir_18"})
    return data


def test_every_recipe_gets_the_same_image_budget(tiny_ablation, tmp_path):
    for name in ablation.RECIPES:
        config = ablation.recipe_config(name, 0, 400, tiny_ablation.paths, "none", tmp_path / "run", ablation.CPU_SIZED)
        per_epoch = ablation.images_per_epoch(config)
        assert abs(config.num_epochs * per_epoch - 400) <= per_epoch / 2 + 1, name
        assert config.early_stopping_patience == 0 and config.part_backbone == "tiny"


def test_ablation_writes_a_table_with_the_parts_only_row(tiny_ablation, tmp_path):
    recipes = ["triplets, twin negatives", ablation.DEFAULT_RECIPE]
    result = ablation.run_ablation(tmp_path / "ablation", [0], 60, recipes, None, "none")
    names = [row["recipe"] for row in result["rows"]]
    assert names == recipes + [ablation.PARTS_ONLY]
    for row in result["rows"]:
        assert 0 <= row["twin_eer_mean"] <= 1 and 0 <= row["general_eer_mean"] <= 1
        assert row["images_encoded"] > 0 and row["seconds"] > 0
    text = (tmp_path / "ablation" / "ablation.md").read_text()
    assert "| recipe | twin EER, mean ± sd |" in text and ablation.PARTS_ONLY in text
    saved = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    run = saved["runs"][ablation.DEFAULT_RECIPE][0]
    assert set(run["time_to_twin_eer"]) == {"0.2", "0.1"} and run["seed"] == 0
    parts_only = saved["runs"][ablation.PARTS_ONLY][0]
    assert parts_only["images_encoded"] == run["images_encoded"]  # the same model, scored without its global input
    again = ablation.run_ablation(tmp_path / "ablation", [0], 60, recipes, None, "none")  # resumes: nothing retrained
    assert [r["twin_eer_mean"] for r in again["rows"]] == [r["twin_eer_mean"] for r in result["rows"]]
    slug = ablation.DEFAULT_RECIPE.replace(",", "").replace(" + ", "_").replace(" ", "_")
    report = json.loads((tmp_path / "ablation" / "runs" / slug / "seed0" / "evaluation_parts_only" / "report.json")
                        .read_text())
    assert "parts only" in report["models"]["combined"]["label"]
