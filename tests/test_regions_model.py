"""The region list travels with the model: extraction, training, checkpoints, evaluation, inference, ONNX."""

import json

import numpy as np
import pytest
import torch

import cutout
import evaluate
import export_onnx
import face_parts_extractor as extractor
import inference
import trait_breakdown
import verification_pairs as vp
from combined_model import TwinVerificationModel
from conftest import tiny_train_config
from train_config import ConfigError, TrainConfig, build_parser
from train_twin_verification import run_training
from triplet_dataset import DataIndexError, FaceDataIndex

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = dict(adaface_arch="ir_18", part_backbone="tiny", face_parts_embedding_dim=16, hidden_dim=32, embedding_dim=16,
            adaface_checkpoint=None)
EXTENDED = cutout.REGION_SETS["extended"]


def random_parts(regions, batch=2, crop=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {r: torch.randn(batch, 3, crop, crop, generator=generator) for r in regions}


def test_checkpoint_records_regions_and_the_projection_follows_them(tmp_path):
    torch.manual_seed(0)
    model = TwinVerificationModel(**TINY, regions=EXTENDED).eval()
    assert model.config.regions == EXTENDED and list(model.face_parts.encoders) == list(EXTENDED)
    assert model.projection[0].in_features == 512 + 8 * 16
    path = tmp_path / "best.pth"
    torch.save(model.deployable_checkpoint(part_crop_size=32), path)
    saved = torch.load(path, weights_only=True)  # plain types only
    assert saved["model_config"]["regions"] == list(EXTENDED)
    loaded = TwinVerificationModel.from_checkpoint(path)
    assert loaded.config.regions == EXTENDED
    parts, global_embedding = random_parts(EXTENDED), torch.nn.functional.normalize(torch.randn(2, 512), dim=1)
    torch.testing.assert_close(loaded(None, parts, global_embedding).embedding,
                               model(None, parts, global_embedding).embedding)
    with pytest.raises(KeyError, match="forehead"):
        loaded(None, random_parts(cutout.PART_NAMES), global_embedding)


def test_a_checkpoint_from_before_regions_loads_as_the_five_parts(tmp_path):
    torch.manual_seed(0)
    model = TwinVerificationModel(**TINY).eval()
    checkpoint = model.deployable_checkpoint(part_crop_size=32)
    del checkpoint["model_config"]["regions"]  # what older checkpoints hold
    loaded = TwinVerificationModel.from_checkpoint(checkpoint)
    assert loaded.config.regions == cutout.PART_NAMES
    parts, global_embedding = random_parts(cutout.PART_NAMES), torch.nn.functional.normalize(torch.randn(2, 512), 1)
    torch.testing.assert_close(loaded(None, parts, global_embedding).embedding,
                               model(None, parts, global_embedding).embedding)
    wider = TwinVerificationModel(**TINY, regions=EXTENDED).deployable_checkpoint(part_crop_size=32)
    wider["model_config"]["regions"] = list(cutout.PART_NAMES)  # weights of 8 encoders under a 5-region config
    with pytest.raises(RuntimeError, match="face_parts.encoders.forehead"):
        TwinVerificationModel.from_checkpoint(wider)


def test_config_checks_regions_and_the_index_needs_them(synthetic_data):
    assert TrainConfig(regions="extended").region_names == EXTENDED
    assert "--regions" in build_parser().format_help()  # every help text formats (a % among them)
    with pytest.raises(ConfigError, match="regions"):
        TrainConfig(regions="nose,ear")
    with pytest.raises(DataIndexError, match="lacks regions.*--regions"):
        FaceDataIndex.load(synthetic_data["face_parts_dataset_path"], synthetic_data["tensor_dataset_path"],
                           synthetic_data["twin_pairs_path"], EXTENDED)


@pytest.fixture(scope="module")
def eight_region_run(tmp_path_factory):
    from synthetic_extraction import write_synthetic_extraction

    folder = tmp_path_factory.mktemp("eight_regions")
    data = write_synthetic_extraction(folder / "data", regions=EXTENDED)
    run_training(tiny_train_config(data, folder / "run", regions="extended", train_split=0.4, test_split=0.4))
    return folder / "run" / "checkpoints" / "best.pth"


def test_an_eight_region_model_trains_evaluates_and_verifies(eight_region_run, shared_faces, landmarker_model,
                                                             tmp_path):
    checkpoint = torch.load(eight_region_run, weights_only=True)
    assert checkpoint["model_config"]["regions"] == list(EXTENDED) and checkpoint["config"]["regions"] == "extended"
    report = evaluate.evaluate(eight_region_run, tmp_path / "evaluation", bootstrap=0, workers=0, progress=False)
    assert report["models"]["combined"]["test"]["twin"] is not None
    with inference.TwinVerifier.from_checkpoint(eight_region_run, landmarker_model=landmarker_model) as verifier:
        face = verifier.prepare(shared_faces / "obama" / "obama.jpg")
        assert list(face.parts_rgb) == list(EXTENDED)
        result = verifier.verify(shared_faces / "obama" / "obama.jpg", shared_faces / "obama" / "obama2.jpg")
        assert -1 <= result.similarity <= 1 and result.same_person in (True, False)


def test_an_eight_region_model_exports_to_onnx(eight_region_run, tmp_path):
    model, info = inference.load_twin_checkpoint(eight_region_run, None, "cpu")
    paths = export_onnx.export_onnx(model, info["part_crop_size"], tmp_path)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(paths["local"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [*EXTENDED, "global_embedding"]
    differences = export_onnx.check_onnx(model, paths, info["part_crop_size"], batch_sizes=(2,))
    assert max(differences.values()) < 1e-4


def test_extraction_cuts_the_chosen_regions_and_refuses_to_mix(copy_photos, landmarker_model, tmp_path, capsys):
    photos = copy_photos({"obama": ["obama.jpg"]})
    output = tmp_path / "out"
    arguments = ["--image-folder", str(photos), "--output-dir", str(output), "--crop-size", "32",
                 "--landmarker-model", str(landmarker_model), "--no-progress"]
    assert extractor.main([*arguments, "--regions", "extended"]) == extractor.EXIT_OK
    index = json.loads((output / extractor.PARTS_INDEX).read_text())
    (parts,) = index["obama"].values()
    assert list(parts) == list(EXTENDED) and all((output / path).is_file() for path in parts.values())
    sheet = extractor.cv2.imread(str(output / "contact_sheet_01.png"))
    assert sheet.shape[1] == (1 + 8) * extractor.CONTACT_THUMB_PX  # the face with regions drawn, then 8 crops
    assert extractor.main(arguments) == extractor.EXIT_FATAL  # default (five) regions in an 8-region folder
    assert "regions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        extractor.main([*arguments, "--regions", "ear"])


def test_twin_eer_by_trait_selects_families_by_their_distinguishing_marks():
    traits = {"a1": {"traits": [{"kind": "pit", "group": "outside", "shared": False},
                                {"kind": "scar", "group": "five", "shared": True}]},
              "a2": {"traits": [{"kind": "scar", "group": "five", "shared": True}]},
              "b1": {"traits": [{"kind": "scar", "group": "five", "shared": False}]},
              "b2": {"traits": [{"kind": "pit", "group": "added", "shared": False}]}}
    twin_of = {"a1": "a2", "a2": "a1", "b1": "b2", "b2": "b1"}
    # Pairs: family a separates perfectly, family b not at all.
    persons = [("a1", "a1", vp.GENUINE, 0.9), ("a2", "a2", vp.GENUINE, 0.8), ("a1", "a2", vp.TWIN, 0.1),
               ("b1", "b1", vp.GENUINE, 0.2), ("b2", "b2", vp.GENUINE, 0.3), ("b1", "b2", vp.TWIN, 0.7),
               ("a1", "b1", vp.GENERAL, 0.0)]
    a, b, kind, scores = zip(*persons)
    result = trait_breakdown.twin_eer_by_trait(np.array(scores), np.array(kind), list(a), list(b), twin_of, traits)
    assert result["region"]["outside"] == {"families": 1, "genuine_pairs": 2, "twin_pairs": 1, "eer": 0.0}
    assert result["region"]["mixed"]["families"] == 1 and result["region"]["mixed"]["eer"] == 1.0
    assert result["region"]["not_in_five"]["families"] == 1  # family a: its only own mark is outside
    assert result["kind"]["pit"]["families"] == 2 and result["kind"]["scar"]["families"] == 1
    assert result["kind"]["scar"]["eer"] == 1.0  # the shared scar of family a does not count
    assert "pit" in trait_breakdown.table({"combined": result})


def test_twin_eer_by_photo_sets_genuine_pairs_from_one_photo_apart_from_those_from_two():
    sources = {("a1", "k1"): "a/1.jpg", ("a1", "k2"): "a/1.jpg", ("a1", "k3"): "a/2.jpg",
               ("a2", "k1"): "a/1.jpg", ("a2", "k2"): "a/2.jpg"}
    twin_of = {"a1": "a2", "a2": "a1"}
    # Same-photo genuine pairs score above the twins, other-photo ones below them.
    pairs = [(("a1", "k1"), ("a1", "k2"), vp.GENUINE, 0.9), (("a1", "k1"), ("a1", "k3"), vp.GENUINE, 0.2),
             (("a1", "k2"), ("a1", "k3"), vp.GENUINE, 0.1), (("a1", "k1"), ("a2", "k1"), vp.TWIN, 0.5),
             (("a1", "k3"), ("a2", "k2"), vp.TWIN, 0.6), (("a1", "k1"), ("b1", "k1"), vp.GENERAL, 0.95),
             (("a1", "k1"), ("a1", "unlisted"), vp.GENUINE, 0.0)]  # an image the traits do not list
    a, b, kind, scores = zip(*pairs)
    result = trait_breakdown.twin_eer_by_photo(np.array(scores), np.array(kind), list(a), list(b), twin_of, sources)
    assert result["same_photo"] == {"families": 1, "genuine_pairs": 1, "twin_pairs": 2, "eer": 0.0}
    assert result["other_photo"] == {"families": 1, "genuine_pairs": 2, "twin_pairs": 2, "eer": 1.0}


def test_source_photos_come_from_the_traits_and_the_image_order_beside_them(tmp_path):
    traits = {"identities": {"p_a": {"sources": ["p/1.jpg", "p/2.jpg"], "traits": []}}}
    (tmp_path / "traits.json").write_text(json.dumps(traits))
    assert trait_breakdown.load_sources(tmp_path / "traits.json") is None  # no jpg_dataset.json beside it
    entries = ["images/p_a/p_a_00.jpg", "images/p_a/p_a_01.jpg"]
    (tmp_path / "jpg_dataset.json").write_text(json.dumps({"p_a": entries}))
    sources = trait_breakdown.load_sources(tmp_path / "traits.json")
    assert sources == {("p_a", extractor.image_key(entries[0])): "p/1.jpg",
                       ("p_a", extractor.image_key(entries[1])): "p/2.jpg"}
    (tmp_path / "jpg_dataset.json").write_text(json.dumps({"p_a": entries[:1]}))
    with pytest.raises(trait_breakdown.TraitFileError, match="jpg_dataset.json"):
        trait_breakdown.load_sources(tmp_path / "traits.json")
