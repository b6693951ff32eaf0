"""Training: loss and schedule, end to end, exact resume, NaN stop, bf16, TensorBoard, DDP."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import train_twin_verification as train
import verification_pairs as vp
from combined_model import TwinVerificationModel
from conftest import REPO, one_epoch_setup, tiny_train_config
from train_config import ConfigError, TrainConfig, parse_config


def test_triplet_loss_matches_a_loop():
    generator = torch.Generator().manual_seed(0)
    a, p, n = (torch.nn.functional.normalize(torch.randn(7, 5, generator=generator), dim=1) for _ in range(3))
    loss, per = train.triplet_loss(a, p, n, margin=0.4)
    expected = [max(0.0, float(torch.dist(a[i], p[i]) - torch.dist(a[i], n[i])) + 0.4) for i in range(7)]
    assert per.tolist() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(np.mean(expected), abs=1e-6)


def test_triplet_loss_is_float32_under_bf16_inputs():
    a = torch.nn.functional.normalize(torch.randn(4, 64), dim=1)
    p = torch.nn.functional.normalize(a + 1e-3 * torch.randn(4, 64), dim=1)
    n = torch.nn.functional.normalize(a + 2e-3 * torch.randn(4, 64), dim=1)
    loss, per = train.triplet_loss(a.bfloat16(), p.bfloat16(), n.bfloat16(), margin=1.0)
    assert per.dtype == torch.float32


def test_learning_rate_warms_up_then_decays():
    factors = [train.learning_rate_factor(s, total_steps=100, warmup_steps=10) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(b <= a for a, b in zip(factors[10:], factors[11:])) and factors[-1] < 0.01


def test_every_original_key_is_a_flag_with_its_default(tmp_path):
    defaults = parse_config([])
    original = dict(num_epochs=100, batch_size=8, learning_rate=1e-4, triplet_margin=1.0, train_split=0.8,
                    face_parts_embedding_dim=128, adaface_arch="ir_50", freeze_adaface=True,
                    output_dir="twin_verification_training")
    assert {k: getattr(defaults, k) for k in original} == original
    (tmp_path / "run.json").write_text(json.dumps({"num_epochs": 7, "batch_size": 3}))
    config = parse_config(["--config", str(tmp_path / "run.json"), "--batch-size", "5"])
    assert (config.num_epochs, config.batch_size) == (7, 5)  # file < flags
    (tmp_path / "bad.json").write_text(json.dumps({"num_epoch": 7}))
    with pytest.raises(ConfigError, match="num_epoch"):
        parse_config(["--config", str(tmp_path / "bad.json")])
    with pytest.raises(ConfigError, match="must be int"):
        TrainConfig.from_dict({"batch_size": "8"})
    with pytest.raises(ConfigError, match="freeze_adaface"):
        parse_config(["--freeze-adaface", "false"])


@pytest.fixture(scope="module")
def finished_run(synthetic_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    config = tiny_train_config(synthetic_data, output, num_epochs=2)
    state = train.run_training(config)
    return config, output, state


def test_end_to_end_outputs(finished_run):
    config, output, state = finished_run
    assert state["epoch"] == 2 and state["finished"] == "completed 2 epochs"
    for name in ("checkpoints/latest.pth", "checkpoints/best.pth", "split.json", "config.json",
                 "cache/global_embeddings.pt"):
        assert (output / name).is_file(), name
    rows = [json.loads(line) for line in (output / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("train_loss", "val_loss", "twin_eer", "general_eer", "active_fraction", "twin_negative_ratio",
                "triplets_per_second", "part_images_per_second", "learning_rate", "stage", "time_to_twin_eer",
                "recogniser_weight", "twin_model_twin_eer", "twin_model_general_eer"):
        assert rows[-1][key] is not None, key
    assert config.sampler == "families" and config.loss == "batch_all" and config.part_head == "spatial"  # defaults
    assert rows[-1]["cumulative_images_encoded"] == sum(r["images_encoded"] for r in rows) == state["images_encoded"]
    assert set(rows[-1]["time_to_twin_eer"]) == {"0.2", "0.1"}

    best = torch.load(output / "checkpoints" / "best.pth", weights_only=True)
    assert best["epoch"] == state["best"]["epoch"] and best["config"]["seed"] == config.seed
    assert best["part_crop_size"] == 32 and -1 <= best["threshold"] <= 1
    assert best["recogniser_weight"] == rows[best["epoch"] - 1]["recogniser_weight"]
    assert best["recogniser_weight"] in {float(w) for w in vp.RECOGNISER_WEIGHTS}
    # The threshold is set by the validation twins (too few here to measure 1e-2: none is accepted).
    assert best["threshold_rule"].startswith("twin FAR <= 0.01 on ") and "too few" in best["threshold_rule"]
    assert best["validation"]["twin_far_at_threshold"] == 0.0
    assert best["validation"]["general_far_at_threshold"] is not None
    model = TwinVerificationModel.from_checkpoint(output / "checkpoints" / "best.pth")
    assert model.config.part_backbone == "tiny" and "UNTRAINED" in best["global_branch"]
    parts = {p: torch.randn(2, 3, 32, 32) for p in ("left_eye", "right_eye", "nose", "mouth", "chin")}
    out = model(torch.rand(2, 3, 112, 112) * 2 - 1, parts)
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(2))


def test_tensorboard_has_the_promised_series(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, output, _ = finished_run
    events = EventAccumulator(str(output / "logs"), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/batch_loss", "train/learning_rate", "train/train_loss", "train/stage",
                "train/twin_negative_ratio", "train/active_fraction", "train/triplets_per_second",
                "train/part_images_per_second", "train/batch_active_fraction", "train/batch_twin_negative_ratio",
                "val/val_loss", "val/twin_eer", "val/general_eer"):
        assert tag in scalars, tag
    assert "train/part_crops" in events.Tags()["images"] and "val/roc" in events.Tags()["images"]


def test_finished_epochs_are_never_run_again(finished_run, monkeypatch):
    config, output, _ = finished_run
    monkeypatch.setattr(train, "train_one_epoch", lambda *a, **k: pytest.fail("a finished epoch ran again"))
    state = train.run_training(config)
    assert state["epoch"] == 2 and len(state["history"]) == 2


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(synthetic_data, finished_run, tmp_path):
    config, output, _ = finished_run
    interrupted = replace(config, output_dir=str(tmp_path / "resumed"), stop_after_epochs=1)
    first = train.run_training(interrupted)
    assert first["epoch"] == 1 and first["finished"] is None
    second = train.run_training(replace(interrupted, stop_after_epochs=0, num_workers=1))  # run control may change
    assert second["epoch"] == 2
    straight = torch.load(output / "checkpoints" / "latest.pth", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "latest.pth", weights_only=True)
    assert straight["model_state_dict"].keys() == resumed["model_state_dict"].keys()
    for key, value in straight["model_state_dict"].items():
        assert torch.equal(value, resumed["model_state_dict"][key]), key
    assert [r["train_loss"] for r in straight["history"]] == [r["train_loss"] for r in resumed["history"]]


def test_resume_with_pre_drawn_triplets_too(synthetic_data, tmp_path):
    config = tiny_train_config(synthetic_data, tmp_path / "straight", num_epochs=2, sampler="triplets", loss="triplet")
    straight = train.run_training(config)
    interrupted = replace(config, output_dir=str(tmp_path / "resumed"), stop_after_epochs=1)
    train.run_training(interrupted)
    resumed = train.run_training(replace(interrupted, stop_after_epochs=0))
    assert [r["train_loss"] for r in straight["history"]] == [r["train_loss"] for r in resumed["history"]]
    assert straight["history"][0]["images_encoded"] == 3 * straight["history"][0]["triplets"] > 0


def test_resume_with_packed_crops_and_augmentation_on_the_device(tmp_path, monkeypatch):
    from packed_crops import pack_extraction
    from synthetic_extraction import write_synthetic_extraction
    from triplet_dataset import FaceDataIndex

    data = write_synthetic_extraction(tmp_path / "data")
    pack_extraction(data["face_parts_dataset_path"])
    assert FaceDataIndex.load(*(data[k] for k in ("face_parts_dataset_path", "tensor_dataset_path",
                                                  "twin_pairs_path"))).packed is not None
    augmented = []
    real_augment = train.device_augment.augment_batch
    monkeypatch.setattr(train.device_augment, "augment_batch",
                        lambda crops, params: augmented.append(len(crops)) or real_augment(crops, params))
    config = tiny_train_config(data, tmp_path / "straight", num_epochs=2, augment_on_device="on")
    straight = train.run_training(config)
    assert augmented and sum(augmented) == 5 * sum(r["images_encoded"] for r in straight["history"])
    interrupted = replace(config, output_dir=str(tmp_path / "resumed"), stop_after_epochs=1)
    assert train.run_training(interrupted)["epoch"] == 1
    resumed = train.run_training(replace(interrupted, stop_after_epochs=0))
    assert [r["train_loss"] for r in straight["history"]] == [r["train_loss"] for r in resumed["history"]]
    weights = [torch.load(tmp_path / run / "checkpoints" / "latest.pth", weights_only=True)["model_state_dict"]
               for run in ("straight", "resumed")]
    assert all(torch.equal(value, weights[1][key]) for key, value in weights[0].items())


def test_runs_from_before_a_key_existed_resume_as_they_ran(finished_run, tmp_path):
    """A saved config without `augment_on_device` or `compile` resumes with any value of either:
    both say how a step runs (where the crops are warped follows the device, which may change
    between resumes), not what the run computes."""
    config, _, _ = finished_run
    config = config.with_absolute_data_paths()
    saved = {k: v for k, v in config.to_dict().items() if k not in ("augment_on_device", "compile")}
    for where in ("off", "on", "auto"):
        train.check_resumable(saved, replace(config, augment_on_device=where, compile=where == "on"),
                              tmp_path / "latest.pth")
    assert TrainConfig.from_dict(saved).augment_on_device == "auto" and not TrainConfig.from_dict(saved).compile


def test_runs_from_before_highpass_input_and_parts_loss_resume_as_they_ran(finished_run, tmp_path):
    """A saved config without `part_input` or `part_loss_weight` was made with the crop as it is
    and no parts loss: it resumes with those values and is refused with today's defaults."""
    config, _, _ = finished_run
    config = config.with_absolute_data_paths()
    saved = {k: v for k, v in config.to_dict().items() if k not in ("part_input", "part_loss_weight")}
    train.check_resumable(saved, replace(config, part_input="rgb", part_loss_weight=0.0), tmp_path / "latest.pth")
    with pytest.raises(ConfigError, match="part_input: 'rgb' → 'highpass'"):
        train.check_resumable(saved, replace(config, part_input="highpass", part_loss_weight=0.0),
                              tmp_path / "latest.pth")


@pytest.mark.parametrize("key, before, today", [("decision_embedding", "combined", "both"),
                                                 ("recogniser_weight", "0", "auto")])
def test_runs_saved_before_a_key_resume_as_they_ran(finished_run, tmp_path, key, before, today):
    """A saved config without `key` was made with what is now its value `before` (the projection
    compared; the twin model alone): it resumes with that and is refused with today's default."""
    config, _, _ = finished_run
    config = config.with_absolute_data_paths()
    saved = {k: v for k, v in config.to_dict().items() if k != key}
    train.check_resumable(saved, replace(config, **{key: before}), tmp_path / "latest.pth")
    with pytest.raises(ConfigError, match=f"{key}: '{before}' → '{today}'"):
        train.check_resumable(saved, replace(config, **{key: today}), tmp_path / "latest.pth")


def test_the_recogniser_weight_is_auto_or_a_number():
    assert parse_config([]).recogniser_weight == "auto"
    assert parse_config(["--recogniser-weight", "0.3"]).recogniser_weight == "0.3"
    for bad in ("1.5", "-0.1", "nan", "half"):
        with pytest.raises(ConfigError, match="recogniser_weight.*choose auto or a number within 0..1"):
            parse_config(["--recogniser-weight", bad])


def test_parts_loss_is_the_mining_loss_on_the_part_embeddings_alone():
    import mining

    generator = torch.Generator().manual_seed(0)
    parts = torch.randn(16, 5 * 8, generator=generator, requires_grad=True)  # five regions of 8
    identity = torch.arange(4).repeat_interleave(4)
    family = identity // 2
    config = TrainConfig(loss="batch_all", triplet_margin=0.5, face_parts_embedding_dim=8)
    loss = train.parts_loss(parts, config, identity, family)
    expected = mining.mined_loss("batch_all", torch.nn.functional.normalize(parts, dim=1), identity, family, 0.5).loss
    assert torch.allclose(loss, expected) and loss > 0
    loss.backward()
    assert parts.grad.abs().sum() > 0


@pytest.mark.parametrize("decision", ["parts", "combined"])
def test_the_mining_loss_trains_the_projection_whatever_is_compared(decision):
    """The mining loss is on the projection's output; with `decision_embedding=parts` the compared
    embedding is the parts' (trained by the parts loss), and the projection still learns."""
    import mining
    import model_runner as runner
    from combined_model import TwinVerificationModel

    torch.manual_seed(0)
    model = TwinVerificationModel(adaface_arch="ir_18", part_backbone="tiny", adaface_checkpoint=None,
                                  face_parts_embedding_dim=8, hidden_dim=16, embedding_dim=8,
                                  decision_embedding=decision).train()
    config = TrainConfig(loss="batch_all", triplet_margin=0.5, part_loss_weight=0.0, global_distillation=0.0,
                         decision_embedding=decision)
    generator = torch.Generator().manual_seed(1)
    identity = torch.arange(4).repeat_interleave(3)
    batch = {"global": torch.nn.functional.normalize(torch.randn(12, 512, generator=generator), dim=1),
             "identity": identity, "family": identity // 2}
    crops = torch.randint(0, 256, (12, 5, 3, 32, 32), generator=generator, dtype=torch.uint8)
    loss, _ = train.batch_loss(model, batch, crops, config, torch.device("cpu"), None, False)
    parts = runner.parts_to_device(crops, torch.device("cpu"), False, config.region_names)
    output, projected = model(None, parts, global_embedding=batch["global"], with_projection=True)
    expected = mining.mined_loss("batch_all", projected, identity, identity // 2, 0.5).loss
    assert torch.allclose(loss, expected) and loss > 0
    assert output.embedding.shape[1] == (40 if decision == "parts" else 8)
    loss.backward()
    assert model.projection[0].weight.grad.abs().sum() > 0


def test_compile_wraps_the_training_steps_and_checkpoints_keep_the_models_keys(synthetic_data, tmp_path,
                                                                               monkeypatch):
    """torch.compile (here with the eager backend: traced, nothing generated) wraps what the steps
    call, only when asked; checkpoints hold the model's own keys, not the wrapper's `_orig_mod.` ones."""
    real_compile, compiled = torch.compile, []

    def recording(module, **settings):
        compiled.append(module)
        return real_compile(module, backend="eager")

    monkeypatch.setattr(torch, "compile", recording)
    plain = train.run_training(tiny_train_config(synthetic_data, tmp_path / "plain", num_epochs=1))
    assert compiled == []
    result = train.run_training(tiny_train_config(synthetic_data, tmp_path / "compiled", num_epochs=1, compile=True))
    assert len(compiled) == 1 and isinstance(compiled[0], TwinVerificationModel)
    assert result["history"][0]["train_loss"] == pytest.approx(plain["history"][0]["train_loss"], rel=1e-5)
    keys = {run: torch.load(tmp_path / run / "checkpoints" / "latest.pth", weights_only=True)["model_state_dict"].keys()
            for run in ("plain", "compiled")}
    assert keys["compiled"] == keys["plain"] and not any("_orig_mod" in k for k in keys["compiled"])
    TwinVerificationModel.from_checkpoint(tmp_path / "compiled" / "checkpoints" / "best.pth")  # strict keys


def test_time_to_accuracy_records_the_first_crossing_only():
    state = {"images_encoded": 100, "seconds": 2.0, "time_to_twin_eer": {"0.2": None, "0.1": None}}
    train.record_time_to_accuracy(state, 0.25, 1)
    assert state["time_to_twin_eer"] == {"0.2": None, "0.1": None}
    train.record_time_to_accuracy(state, 0.15, 2)
    state.update(images_encoded=300, seconds=5.0)
    train.record_time_to_accuracy(state, 0.05, 3)
    train.record_time_to_accuracy(state, 0.01, 4)
    assert state["time_to_twin_eer"] == {"0.2": {"epoch": 2, "images_encoded": 100, "seconds": 2.0},
                                         "0.1": {"epoch": 3, "images_encoded": 300, "seconds": 5.0}}


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(["--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "--families-per-batch" in printed and "--part-head" in printed and "±8%/±20%" in printed


def test_sampler_and_loss_must_agree():
    with pytest.raises(ConfigError, match="sampler"):
        TrainConfig(sampler="triplets", loss="batch_hard")
    with pytest.raises(ConfigError, match="sampler"):
        TrainConfig(sampler="families", loss="triplet")
    assert parse_config(["--sampler", "triplets", "--loss", "triplet"]).negative_strategy == "mixed"


def test_changed_settings_refuse_to_resume(finished_run):
    config, _, _ = finished_run
    with pytest.raises(ConfigError, match="learning_rate"):
        train.run_training(replace(config, learning_rate=0.5))


@pytest.mark.parametrize("log_every_steps", [1, 1000])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_data, tmp_path, monkeypatch,
                                                                  log_every_steps):
    """The loss is checked where values are read anyway: at the next log step, else at the end of the epoch."""
    config = tiny_train_config(synthetic_data, tmp_path / "nan", num_epochs=3)
    train.run_training(replace(config, stop_after_epochs=1))
    good = torch.load(tmp_path / "nan" / "checkpoints" / "latest.pth", weights_only=True)
    real_loss = train.mining.mined_loss

    def poisoned(*args, **kwargs):
        result = real_loss(*args, **kwargs)
        return result._replace(loss=result.loss * float("nan"))

    monkeypatch.setattr(train.mining, "mined_loss", poisoned)
    with pytest.raises(train.NonFiniteLossError, match="latest.pth") as error:
        train.run_training(replace(config, log_every_steps=log_every_steps))
    steps = good["global_step"]  # the steps of one epoch
    last = steps + 1 if log_every_steps == 1 else 2 * steps
    assert f"epoch 2, in global steps {steps + 1}..{last}" in str(error.value)
    kept = torch.load(tmp_path / "nan" / "checkpoints" / "latest.pth", weights_only=True)
    assert kept["epoch"] == 1
    assert all(torch.equal(v, kept["model_state_dict"][k]) for k, v in good["model_state_dict"].items())


HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__")
DEVICE_SIDE_MODULES = {"train_twin_verification", "mining", "model_runner", "distributed"}


class RecordingWriter:
    """Stands in for TensorBoard's SummaryWriter: keeps what it is given."""

    def __init__(self):
        self.images, self.scalars = {}, {}

    def add_image(self, tag, image, step):
        self.images[tag] = image

    def add_scalar(self, tag, value, step):
        self.scalars.setdefault(tag, []).append(value)


@pytest.mark.parametrize("augment_on_device", ["off", "on"])
def test_the_crop_grid_shows_the_crops_as_augmented(synthetic_data, tmp_path, augment_on_device):
    import torchvision

    config, model, optimizer, scheduler, scaler, loader = one_epoch_setup(
        synthetic_data, tmp_path, augment_on_device=augment_on_device, augment_strength=1.0)
    batch = next(iter(loader))
    plain = next(iter(one_epoch_setup(synthetic_data, tmp_path, augment=False)[-1]))["parts"]
    if augment_on_device == "on":
        assert torch.equal(batch["parts"], plain)  # the step augments them
        augmented = train.device_augment.augment_batch(batch["parts"].flatten(0, 1),
                                                       batch["augment_params"].flatten(0, 1)).view(plain.shape)
    else:
        assert "augment_params" not in batch
        augmented = batch["parts"]
    writer = RecordingWriter()
    train.train_one_epoch(model, optimizer, scheduler, scaler, [batch], config, train.distributed.Context(), 0,
                          writer, 0)
    grid = lambda parts: torchvision.utils.make_grid(parts[:8].flatten(0, 1), nrow=5, padding=2)
    shown = writer.images["train/part_crops"]
    assert torch.equal(shown, grid(augmented)) and not torch.equal(shown, grid(plain))
    assert writer.scalars["train/batch_loss"] and np.isfinite(writer.scalars["train/batch_loss"][0])


@pytest.mark.parametrize("sampler, loss", [("families", "batch_all"), ("families", "batch_hard"),
                                           ("triplets", "triplet")])
def test_host_reads_do_not_grow_with_the_steps_of_an_epoch(synthetic_data, tmp_path, monkeypatch, sampler, loss):
    """Values come back to the host at log steps and at the end of the epoch only (on a GPU each
    read waits for every queued step): an epoch of 6 steps reads as often as one of 2."""
    config, model, optimizer, scheduler, scaler, loader = one_epoch_setup(
        synthetic_data, tmp_path, log_every_steps=1000, sampler=sampler, loss=loss)
    batch = next(iter(loader))
    reads = []
    for name in HOST_READS:
        def counted(tensor, *args, _real=getattr(torch.Tensor, name), _name=name):
            if sys._getframe(1).f_globals.get("__name__") in DEVICE_SIDE_MODULES:
                reads.append(_name)
            return _real(tensor, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    counts = []
    for steps in (2, 6):
        reads.clear()
        stats = train.train_one_epoch(model, optimizer, scheduler, scaler, [batch] * steps, config,
                                      train.distributed.Context(), 0, None, 0)
        assert stats["global_step"] == steps and np.isfinite(stats["train_loss"])
        counts.append(len(reads))
    assert counts[0] == counts[1] > 0, reads


def test_bf16_learns(tmp_path):
    """A bf16 run must not stall: its training and validation losses fall, and its validation twin
    EER leaves chance. (Whether it learns *as much* as fp32 depends on the order of floating-point
    sums, which changes with the number of CPU threads; what bf16 itself must not lose is checked
    without training, in `test_bf16_keeps_what_the_parts_add`.)"""
    from synthetic_extraction import write_synthetic_extraction

    data = write_synthetic_extraction(tmp_path / "data", families=10, images_per_person=4)
    # The crops as they are: this is about bf16, and the synthetic marks (4 px at 32 px crops)
    # are learnt faster from them than through the high-pass input's 3-px window.
    config = tiny_train_config(data, tmp_path / "bf16", num_epochs=6, precision="bf16", sampler="triplets",
                               loss="triplet", negative_strategy="twin", augment=False, learning_rate=3e-3,
                               part_input="rgb")
    history = train.run_training(config)["history"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    # The tiny model overfits ten families within a few epochs, so the best validation
    # loss, not the last, shows whether it learned.
    assert min(r["val_loss"] for r in history) < 0.8 * history[0]["val_loss"]
    assert min(r["twin_eer"] for r in history) < 0.3  # chance is 0.5


def test_bf16_keeps_what_the_parts_add():
    """Under bf16 autocast, how the embedding moves when the part crops change must be what it is
    in fp32: the parts' small additions to the global skip's large term are not rounded away."""
    torch.manual_seed(0)
    model = TwinVerificationModel(part_backbone="tiny", adaface_checkpoint=None, face_parts_embedding_dim=16,
                                  hidden_dim=64, embedding_dim=128).eval()
    generator = torch.Generator().manual_seed(1)
    global_embedding = torch.nn.functional.normalize(torch.randn(8, 512, generator=generator), dim=1)
    crops = [{r: torch.randn(8, 3, 32, 32, generator=generator) for r in model.config.regions} for _ in range(2)]
    moves = {}
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            first, second = (model(None, c, global_embedding=global_embedding).embedding.float() for c in crops)
        moves[precision] = (second - first).flatten()
    # 0.9997 as it is; 0.96 when the sum is taken in bf16
    assert torch.nn.functional.cosine_similarity(moves["fp32"], moves["bf16"], dim=0) > 0.99


def test_two_process_ddp_with_gloo(synthetic_data, tmp_path):
    config = tiny_train_config(synthetic_data, tmp_path / "ddp", num_epochs=2)
    (tmp_path / "run.json").write_text(json.dumps(config.to_dict()))
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "train_twin_verification.py"), "--config", str(tmp_path / "run.json")]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "latest.pth", weights_only=True)
    assert state["epoch"] == 2
    # 3 training families, 4 images per identity: one step in which each process takes a family of its
    # own. batch_all counts (anchor, positive, negative) triplets: 8 × 3 × 4 = 96 for a twin pair on its
    # own, none for the twinless person alone (no negative), summed over both processes
    assert state["history"][0]["triplets"] in (96, 192)
    assert result.stdout.count("epoch 1/2") == 1  # only the main process reports
    TwinVerificationModel.from_checkpoint(tmp_path / "ddp" / "checkpoints" / "best.pth")


def test_extract_train_resume_and_load_with_real_photos(copy_photos, landmarker_model, tmp_path):
    """Photos → simulated twins → extraction → 1 epoch, stop → resume to 2 → best.pth loads."""
    import face_parts_extractor as extractor
    from make_twin_demo import build_twin_dataset

    photos = copy_photos({"obama": ["obama.jpg"], "franck": ["franck_01829.jpg"], "cage": ["cage.jpg"]})
    twins = build_twin_dataset(photos, tmp_path / "twins", images_per_identity=3, progress=False)
    summary = extractor.extract_dataset(extractor.load_jpg_dataset(twins.jpg_dataset), twins.jpg_dataset.parent,
                                        tmp_path / "extracted", extractor.ExtractionSettings(crop_size_px=32),
                                        progress=False, contact_sheet_images=0)
    assert summary.failures == [] and summary.extracted == 18
    data = {"face_parts_dataset_path": tmp_path / "extracted" / extractor.PARTS_INDEX,
            "tensor_dataset_path": tmp_path / "extracted" / extractor.TENSOR_INDEX,
            "twin_pairs_path": twins.twin_pairs}
    config = tiny_train_config(data, tmp_path / "run", num_epochs=2, train_split=0.34, test_split=0.33)
    assert train.run_training(replace(config, stop_after_epochs=1))["epoch"] == 1
    assert train.run_training(config)["epoch"] == 2
    model = TwinVerificationModel.from_checkpoint(tmp_path / "run" / "checkpoints" / "best.pth")
    assert model.config.part_backbone == "tiny"


def test_patience_lasts_while_the_decision_or_the_twin_model_by_itself_gets_better():
    """While the recogniser alone decides, the decision's validation EER stands still; the run goes
    on as long as the twin model by itself improves, and best.pth follows the decision."""
    state = {"best": None, "best_twin_model": None, "epochs_without_improvement": 0}
    progress = []
    for decision, own in [(0.5, 0.6), (0.5, 0.55), (0.5, 0.52), (0.5, 0.53), (0.5, 0.53), (0.3, 0.3), (0.3, 0.31)]:
        improved = train.note_progress(state, decision, own)
        if improved:
            state["best"] = {"metric": decision}
        progress.append((improved, state["epochs_without_improvement"]))
    assert progress == [(True, 0), (False, 0), (False, 0), (False, 1), (False, 2), (True, 0), (False, 1)]
    assert state["best_twin_model"] == 0.3
    metric = train.selection_metric
    assert metric({"twin_model_twin_eer": 0.2, "twin_model_general_eer": 0.1, "twin_eer": 0.4, "general_eer": 0.0},
                  "twin_model_") == ("val_twin_plus_general_eer", pytest.approx(0.3))


def test_the_best_checkpoint_weighs_general_impostors_too():
    metric = train.selection_metric
    assert metric({"twin_eer": 0.3, "general_eer": 0.1}) == ("val_twin_plus_general_eer", pytest.approx(0.4))
    # At equal twin EER, the epoch that confuses fewer unrelated people wins; a slightly lower
    # twin EER does not buy a much higher general EER.
    assert metric({"twin_eer": 0.48, "general_eer": 0.02})[1] < metric({"twin_eer": 0.47, "general_eer": 0.15})[1]
    assert metric({"twin_eer": 0.3, "general_eer": None}) == ("val_twin_eer", 0.3)
    assert metric({"twin_eer": None, "general_eer": 0.2}) == ("val_general_eer", 0.2)
