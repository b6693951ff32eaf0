"""AdaFace IR backbone: official sizes, forward contract, checkpoint loading and its safety."""

from __future__ import annotations

import sys
import types
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from net import (
    ADAFACE_ARCHS,
    LIGHTNING_CLASS_NAMES,
    AdaFaceCheckpointError,
    IRBackbone,
    adaface_input_tensor,
    adaface_state_dict,
    build_adaface,
    load_adaface,
)

MODEL_CHECKPOINT_NAME = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
# Official IR-50: 467 state-dict keys, 43,585,600 parameters. The other counts follow
# from the unit counts of the official `get_blocks` (18 keys a unit, 6 more for a conv shortcut).
EXPECTED_KEYS = {"ir_18": 179, "ir_34": 323, "ir_50": 467, "ir_100": 917}
EXPECTED_UNITS = {"ir_18": 8, "ir_34": 16, "ir_50": 24, "ir_100": 49}
unpickled_payloads: list[str] = []


def _record_unpickling(tag: str) -> str:
    unpickled_payloads.append(tag)
    return tag


class Payload:
    """An arbitrary object whose unpickling runs a function: what a hostile file would do."""

    def __reduce__(self):
        return (_record_unpickling, ("ran",))


class Opaque:
    """A plain class of the test's own: not something a checkpoint needs."""


def _model_with_random_stats(arch: str, seed: int) -> IRBackbone:
    """A backbone whose BN statistics and affine terms are random too, so every tensor matters."""
    generator = torch.Generator().manual_seed(seed)
    model = build_adaface(arch)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith(("running_mean", "bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif tensor.ndim == 1 and tensor.is_floating_point():  # BN scale, PReLU slope
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.75)
    return model.eval()


def _faces(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def _save_with_fake_lightning(obj_from_class: Callable[[type], object], path: Path) -> None:
    """torch.save an object that names Lightning's ModelCheckpoint class, without Lightning."""
    module_name, class_name = MODEL_CHECKPOINT_NAME.rsplit(".", 1)
    stand_in = type(class_name, (), {"__module__": module_name, "__qualname__": class_name})
    with pytest.MonkeyPatch.context() as patch:
        for name in ("pytorch_lightning", "pytorch_lightning.callbacks", module_name):
            patch.setitem(sys.modules, name, types.ModuleType(name))
        setattr(sys.modules[module_name], class_name, stand_in)
        torch.save(obj_from_class(stand_in), path)
    assert "pytorch_lightning" not in sys.modules


def _official_layout(model: IRBackbone, model_checkpoint_class: type) -> dict:
    """What Lightning 1.4.4's `dump_checkpoint` writes for AdaFace's `Trainer` module."""
    state_dict = {f"model.{key}": value for key, value in model.state_dict().items()}
    state_dict |= {
        "head.kernel": torch.randn(512, 10),
        "head.t": torch.zeros(1),
        "head.batch_mean": torch.full((1,), 20.0),
        "head.batch_std": torch.full((1,), 100.0),
    }
    return {
        "epoch": 26,
        "global_step": 123456,
        "pytorch-lightning_version": "1.4.4",
        "state_dict": state_dict,
        "callbacks": {
            model_checkpoint_class: {
                "monitor": "val_acc",
                "best_model_score": torch.tensor(0.97),
                "best_model_path": "experiments/ir50_ms1mv2_adaface/epoch=24.ckpt",
                "current_score": torch.tensor(0.96),
                "dirpath": "experiments/ir50_ms1mv2_adaface",
            }
        },
        "optimizer_states": [
            {
                "state": {0: {"momentum_buffer": torch.zeros(3)}},
                "param_groups": [{"lr": 1e-4, "momentum": 0.9, "dampening": 0, "weight_decay": 5e-4,
                                  "nesterov": False, "params": [0]}],
            }
        ],
        "lr_schedulers": [
            {"milestones": Counter({12: 1, 20: 1, 24: 1}), "gamma": 0.1, "base_lrs": [0.1, 0.1],
             "last_epoch": 26, "_step_count": 27, "verbose": False, "_last_lr": [1e-4, 1e-4]}
        ],
        "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                     "growth_interval": 2000, "_growth_tracker": 0},
        "hparams_name": "kwargs",
        # `dict(model.hparams)`: AdaFace's argparse values, a plain dict in every Lightning 1.x.
        "hyper_parameters": {"arch": "ir_50", "head": "adaface", "m": 0.4, "h": 0.333, "s": 64.0,
                             "t_alpha": 0.01, "lr": 0.1, "lr_milestones": [12, 20, 24], "epochs": 26,
                             "use_16bit": True, "distributed_backend": "ddp", "seed": 42},
    }


@pytest.fixture(scope="module")
def official_ir50(tmp_path_factory) -> tuple[Path, IRBackbone]:
    model = _model_with_random_stats("ir_50", seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "adaface_ir50_ms1mv2.ckpt"
    _save_with_fake_lightning(lambda stand_in: _official_layout(model, stand_in), path)
    return path, model


def test_ir50_matches_official_size_and_key_order():
    model = build_adaface("ir_50")
    keys = list(model.state_dict())
    assert len(keys) == 467
    assert sum(parameter.numel() for parameter in model.parameters()) == 43_585_600
    # The official module registers input_layer, output_layer, then body.
    assert keys[0] == "input_layer.0.weight" and keys[7] == "output_layer.0.weight"
    assert keys[16] == "output_layer.4.num_batches_tracked" and keys[17].startswith("body.0.")
    assert "output_layer.3.bias" in keys and "output_layer.4.weight" not in keys  # affine-free BN1d


@pytest.mark.parametrize("arch", ADAFACE_ARCHS)
def test_arch_sizes(arch):
    with torch.device("meta"):  # shapes only: no memory, no time
        model = build_adaface(arch)
    assert len(model.state_dict()) == EXPECTED_KEYS[arch]
    assert len(model.body) == EXPECTED_UNITS[arch]
    strides = [unit.res_layer[4].stride[0] for unit in model.body]
    assert strides.count(2) == 4 and strides[0] == 2


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ValueError, match="ir_18, ir_34, ir_50, ir_100"):
        build_adaface("ir_101")


def test_forward_returns_unit_feature_and_norm():
    model = build_adaface("ir_50").eval()
    faces = _faces(batch=2, seed=0)
    with torch.no_grad():
        feature, norm = model(faces)
        raw = model.output_layer(model.body(model.input_layer(faces)))
    assert feature.shape == (2, 512) and norm.shape == (2, 1)
    torch.testing.assert_close(feature.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(feature * norm, raw)


def test_official_lightning_checkpoint_round_trip(official_ir50):
    path, maker = official_ir50
    # The fixture really names the Lightning class, as a Lightning 1.4 file does.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == [MODEL_CHECKPOINT_NAME]
    assert MODEL_CHECKPOINT_NAME in LIGHTNING_CLASS_NAMES
    loaded = load_adaface(path)
    assert not loaded.training
    faces = _faces(batch=3, seed=2)
    with torch.no_grad():
        expected, loaded_out = maker(faces), loaded(faces)
    assert torch.isfinite(expected[0]).all()
    assert torch.equal(loaded_out[0], expected[0]) and torch.equal(loaded_out[1], expected[1])


def test_state_dict_extraction_formats():
    weights = {"a.weight": torch.ones(1), "b.bias": torch.zeros(1)}
    lightning = {"state_dict": {"model.a.weight": torch.ones(1), "model.b.bias": torch.zeros(1),
                                "head.kernel": torch.ones(2)}, "epoch": 3}
    prefixed = {"model.a.weight": torch.ones(1), "model.b.bias": torch.zeros(1)}
    for checkpoint in (lightning, prefixed, weights):
        assert adaface_state_dict(checkpoint).keys() == weights.keys()
    with pytest.raises(AdaFaceCheckpointError, match="'model.…'"):
        adaface_state_dict({"state_dict": {"head.kernel": torch.ones(2)}})
    with pytest.raises(AdaFaceCheckpointError, match="not tensors"):
        adaface_state_dict({"a.weight": "oops"})


def test_plain_state_dict_file_loads(tmp_path):
    maker = _model_with_random_stats("ir_18", seed=3)
    path = tmp_path / "ir18.pt"
    torch.save(maker.state_dict(), path)
    loaded = load_adaface(path, arch="ir_18")
    faces = _faces(batch=2, seed=4)
    with torch.no_grad():
        assert torch.equal(loaded(faces)[0], maker(faces)[0])


def test_missing_file_says_where_to_put_and_get_it(tmp_path):
    with pytest.raises(AdaFaceCheckpointError) as error:
        load_adaface(tmp_path / "absent.ckpt")
    message = str(error.value)
    assert "absent.ckpt" in message and "pretrained/adaface_ir50_ms1mv2.ckpt" in message
    assert "mk-minchul/AdaFace" in message


def _key_only_file(path: Path, keys) -> Path:
    torch.save({"state_dict": {f"model.{key}": torch.zeros(1) for key in keys}}, path)
    return path


def test_key_mismatch_names_missing_and_unexpected(tmp_path):
    keys = list(build_adaface("ir_50").state_dict())
    keys.remove("body.5.res_layer.1.weight")
    path = _key_only_file(tmp_path / "renamed.ckpt", [*keys, "body.5.res_layer.1.kernel"])
    with pytest.raises(AdaFaceCheckpointError) as error:
        load_adaface(path)
    message = str(error.value)
    assert "renamed.ckpt" in message
    assert "Missing 1 (body.5.res_layer.1.weight)" in message
    assert "unexpected 1 (body.5.res_layer.1.kernel)" in message


def test_other_arch_is_suggested(tmp_path):
    path = _key_only_file(tmp_path / "ir18.ckpt", build_adaface("ir_18").state_dict())
    with pytest.raises(AdaFaceCheckpointError, match="179 backbone keys, ir_50 expects 467.*arch='ir_18'"):
        load_adaface(path)


def test_shape_mismatch_is_a_checkpoint_error(tmp_path):
    path = _key_only_file(tmp_path / "shapes.ckpt", build_adaface("ir_18").state_dict())
    with pytest.raises(AdaFaceCheckpointError, match="shapes.ckpt: weights do not fit ir_18"):
        load_adaface(path, arch="ir_18")


def test_arbitrary_global_is_refused_without_trust(tmp_path):
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {"model.a": torch.zeros(1)}, "extra": Payload()}, path)
    unpickled_payloads.clear()
    with pytest.raises(AdaFaceCheckpointError) as error:
        load_adaface(path)
    message = str(error.value)
    assert f"refused global {_record_unpickling.__module__}._record_unpickling" in message
    assert "--trust-checkpoint" in message and "hostile.ckpt" in message
    assert unpickled_payloads == []

    # Trusting the file unpickles it fully (the payload runs), and says so.
    with pytest.warns(UserWarning, match="fully unpickling"):
        with pytest.raises(AdaFaceCheckpointError, match="expects"):  # a one-key backbone
            load_adaface(path, trust_checkpoint=True)
    assert unpickled_payloads == ["ran"]


def test_instance_of_unknown_class_is_refused(tmp_path):
    path = tmp_path / "opaque.ckpt"
    torch.save({"state_dict": {"model.a": torch.zeros(1)}, "hyper_parameters": Opaque()}, path)
    with pytest.raises(AdaFaceCheckpointError, match=rf"refused global {Opaque.__module__}\.Opaque\b.*--trust"):
        load_adaface(path)


def test_unreadable_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(AdaFaceCheckpointError, match="truncated.ckpt"):
        load_adaface(path)


def test_input_tensor_is_bgr_in_minus_one_to_one():
    face = np.zeros((112, 112, 3), np.uint8)
    face[0, 0] = (255, 0, 0)  # pure blue in BGR
    face[0, 1] = (0, 0, 255)  # pure red in BGR
    face[0, 2] = (128, 128, 128)
    tensor = adaface_input_tensor(face)
    assert tensor.shape == (3, 112, 112) and tensor.dtype == torch.float32
    assert tensor[:, 0, 0].tolist() == [1.0, -1.0, -1.0]
    assert tensor[:, 0, 1].tolist() == [-1.0, -1.0, 1.0]
    torch.testing.assert_close(tensor[:, 0, 2], torch.full((3,), (128 / 255 - 0.5) / 0.5))
    assert tensor.min() == -1.0 and tensor.max() == 1.0
    assert adaface_input_tensor(np.stack([face, face])).shape == (2, 3, 112, 112)


def test_input_tensor_rejects_wrong_dtype_or_size():
    with pytest.raises(ValueError, match="uint8"):
        adaface_input_tensor(np.zeros((112, 112, 3), np.float32))
    with pytest.raises(ValueError, match="112"):
        adaface_input_tensor(np.zeros((96, 112, 3), np.uint8))
