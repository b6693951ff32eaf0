"""ONNX export: the CLI end to end, both graphs against PyTorch for batches of 1 and 3, the refusals."""

import contextlib
import io
import json

import onnx
import pytest
import torch

import export_onnx
from combined_model import TwinVerificationModel

CROP_PX = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model saved as a best.pth and exported by the CLI: (model, checkpoint, output folder, stdout)."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = TwinVerificationModel(adaface_arch="ir_18", part_backbone="tiny", face_parts_embedding_dim=16,
                                  hidden_dim=32, embedding_dim=16, adaface_checkpoint=None).eval()
    checkpoint = folder / "best.pth"
    torch.save(model.deployable_checkpoint(part_crop_size=CROP_PX, threshold=0.25, recogniser_gate=0.3,
                                           recogniser_weight=0.4, global_branch="test"), checkpoint)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = export_onnx.main(["--checkpoint", str(checkpoint), "--output-dir", str(folder / "onnx")])
    assert status == 0
    return model, checkpoint, folder / "onnx", printed.getvalue()


def graph_paths(output):
    return {"global": output / export_onnx.GLOBAL_GRAPH, "local": output / export_onnx.LOCAL_GRAPH}


def test_cli_writes_both_graphs_and_their_metadata(exported):
    _, _, output, printed = exported
    assert "max difference embedding" in printed and "within" in printed
    assert sorted(p.name for p in output.iterdir()) == ["twin_global.onnx", "twin_local.onnx", "twin_onnx.json"]
    metadata = json.loads((output / export_onnx.METADATA_FILE).read_text())
    assert metadata["part_crop_size"] == CROP_PX and metadata["threshold"] == 0.25
    assert metadata["recogniser_gate"] == 0.3 and metadata["recogniser_weight"] == 0.4
    assert max(metadata["max_differences"].values()) < export_onnx.DEFAULT_TOLERANCE


def test_graphs_match_pytorch_for_batches_of_one_and_three(exported):
    model, _, output, _ = exported
    differences = export_onnx.check_onnx(model, graph_paths(output), CROP_PX, batch_sizes=(1, 3), seed=1)
    assert set(differences) == {"feature", "norm_relative", "embedding", "end_to_end"}
    for name, value in differences.items():
        assert 0 <= value < export_onnx.DEFAULT_TOLERANCE, (name, value)


def test_graphs_have_the_promised_inputs_and_a_dynamic_batch(exported):
    _, _, output, _ = exported
    paths = graph_paths(output)
    for name, inputs, outputs in (("global", ["face"], ["feature", "norm"]),
                                  ("local", ["left_eye", "right_eye", "nose", "mouth", "chin", "global_embedding"],
                                   ["embedding"])):
        graph = onnx.load(paths[name]).graph
        assert [i.name for i in graph.input] == inputs and [o.name for o in graph.output] == outputs
        for value in [*graph.input, *graph.output]:
            batch = value.type.tensor_type.shape.dim[0]
            assert batch.dim_param and not batch.dim_value, (name, value.name)
    local_inputs = onnx.load(paths["local"]).graph.input
    assert [d.dim_value for d in local_inputs[0].type.tensor_type.shape.dim[1:]] == [3, CROP_PX, CROP_PX]


def test_cli_refuses_a_mismatch_and_a_missing_checkpoint(exported, tmp_path, capsys, monkeypatch):
    _, checkpoint, _, _ = exported
    output = tmp_path / "onnx"
    output.mkdir()
    (output / export_onnx.METADATA_FILE).write_text("{}")  # from an earlier, good export
    monkeypatch.setattr(export_onnx, "export_onnx", lambda *args, **kwargs: graph_paths(output))
    monkeypatch.setattr(export_onnx, "check_onnx", lambda *args, **kwargs: {"embedding": 0.5, "feature": 0.0})
    assert export_onnx.main(["--checkpoint", str(checkpoint), "--output-dir", str(output)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "embedding 0.5" in error
    assert not (output / export_onnx.METADATA_FILE).exists()  # it would vouch for bad graphs

    assert export_onnx.main(["--checkpoint", str(tmp_path / "missing.pth"), "--output-dir", str(output)]) == 1
    assert "missing.pth" in capsys.readouterr().err


@pytest.mark.parametrize("decision", ["parts", "both"])
def test_a_parts_decision_exports_the_part_embedding_with_the_same_inputs(tmp_path, decision):
    torch.manual_seed(0)
    model = TwinVerificationModel(adaface_arch="ir_18", part_backbone="tiny", face_parts_embedding_dim=16,
                                  hidden_dim=32, embedding_dim=16, adaface_checkpoint=None,
                                  decision_embedding=decision).eval()
    checkpoint = tmp_path / "best.pth"
    torch.save(model.deployable_checkpoint(part_crop_size=CROP_PX, threshold=0.25, recogniser_gate=0.3), checkpoint)
    with contextlib.redirect_stdout(io.StringIO()):
        assert export_onnx.main(["--checkpoint", str(checkpoint), "--output-dir", str(tmp_path / "onnx")]) == 0
    paths = graph_paths(tmp_path / "onnx")
    differences = export_onnx.check_onnx(model, paths, CROP_PX, batch_sizes=(1, 3), seed=1)
    assert max(differences.values()) < export_onnx.DEFAULT_TOLERANCE, differences
    # Consumers feed the same inputs whichever embedding is compared.
    graph = onnx.load(paths["local"]).graph
    assert [i.name for i in graph.input][-1] == "global_embedding"
    width = 5 * 16 + (16 if decision == "both" else 0)
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim[1:]] == [width]
    metadata = json.loads((tmp_path / "onnx" / export_onnx.METADATA_FILE).read_text())
    assert metadata["embedding_dim"] == width and metadata["decision_embedding"] == decision
