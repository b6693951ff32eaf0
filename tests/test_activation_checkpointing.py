"""Activation checkpointing changes memory, not results: same loss, gradients and BatchNorm statistics."""

import pytest
import torch

from cutout import PART_NAMES
from face_parts_model import FacePartsModel


@pytest.mark.parametrize("backbone", ["resnet18", "tiny"])
def test_checkpointing_gives_the_same_loss_gradients_and_statistics(backbone):
    torch.manual_seed(0)
    reference = FacePartsModel(backbone, embedding_dim=16).train()
    checkpointed = FacePartsModel(backbone, embedding_dim=16).train()
    checkpointed.load_state_dict(reference.state_dict())
    checkpointed.set_activation_checkpointing(True)
    generator = torch.Generator().manual_seed(1)
    parts = {name: torch.randn(3, 3, 64, 64, generator=generator) for name in PART_NAMES}
    target = torch.randn(3, 16 * len(PART_NAMES), generator=generator)
    losses = []
    for model in (reference, checkpointed):
        loss = ((model(parts) - target) ** 2).sum()
        loss.backward()
        losses.append(loss.item())
    # Tolerance: the recomputation repeats the same float32 operations; only summation order may differ.
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    gradients = dict(checkpointed.named_parameters())
    for name, parameter in reference.named_parameters():
        assert torch.allclose(parameter.grad, gradients[name].grad, rtol=1e-5, atol=1e-6), name
    buffers = dict(checkpointed.named_buffers())
    for name, buffer in reference.named_buffers():  # running statistics updated once, not twice
        assert torch.allclose(buffer.float(), buffers[name].float(), rtol=1e-6, atol=1e-7), name


def test_checkpointing_is_off_in_evaluation_and_without_gradients():
    model = FacePartsModel("resnet18", embedding_dim=8)
    model.set_activation_checkpointing(True)
    parts = {name: torch.randn(2, 3, 64, 64) for name in PART_NAMES}
    with torch.no_grad():
        model.train()(parts)  # no recomputation graph to build; must simply run
    out = model.eval()(parts)
    assert out.shape == (2, 8 * len(PART_NAMES))


def test_a_training_run_with_checkpointing_matches_one_without(synthetic_data, tmp_path, one_torch_thread):
    from conftest import tiny_train_config
    from train_twin_verification import run_training

    histories = {}
    for enabled in (False, True):
        config = tiny_train_config(synthetic_data, tmp_path / str(enabled), num_epochs=1,
                                   activation_checkpointing=enabled)
        histories[enabled] = run_training(config)["history"]
    for key in ("train_loss", "val_loss", "twin_eer"):
        assert histories[True][0][key] == pytest.approx(histories[False][0][key], rel=1e-4, abs=1e-6), key
