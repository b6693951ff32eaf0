"""Shared fixtures: the sample photos, the landmarker bundle, small copies of datasets."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_FACES = Path(os.environ.get("TWIN_SAMPLE_FACES", REPO.parent / "shared" / "faces"))
LANDMARKER = REPO / "pretrained" / "face_landmarker.task"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy shared machine torch's spinning
    threads make them several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """The folder of real sample photos (one sub-folder per person), read-only."""
    if not (SHARED_FACES / "obama").is_dir():
        pytest.skip(f"sample photos not found at {SHARED_FACES} (set TWIN_SAMPLE_FACES to their folder)")
    return SHARED_FACES


@pytest.fixture(scope="session")
def landmarker_model() -> Path:
    if not LANDMARKER.is_file():
        pytest.skip(f"{LANDMARKER} missing: run `make setup` (or `python fetch_models.py landmarker`)")
    return LANDMARKER


@pytest.fixture(scope="session")
def detector(landmarker_model):
    from face_images import FaceLandmarkDetector

    with FaceLandmarkDetector(landmarker_model) as instance:
        yield instance


@pytest.fixture
def copy_photos(shared_faces, tmp_path):
    """Copy chosen sample photos (`{person: [file names]}`) into a fresh `tmp/photos/person/`."""

    def copy(selection: dict[str, list[str]], folder: str = "photos") -> Path:
        destination = tmp_path / folder
        for person, names in selection.items():
            (destination / person).mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copy(shared_faces / person / name, destination / person / name)
        return destination

    return copy


def write_adaface_checkpoint(path: Path, arch: str = "ir_18", seed: int = 0) -> Path:
    """A file in the official AdaFace layout (Lightning `state_dict` with `model.` keys and a
    margin head) holding random weights."""
    import torch

    from net import build_adaface

    torch.manual_seed(seed)
    backbone = build_adaface(arch)
    state = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    state["head.kernel"] = torch.randn(512, 10)
    torch.save({"state_dict": state, "epoch": 1, "global_step": 10}, path)
    return path


@pytest.fixture(scope="session")
def adaface_file(tmp_path_factory) -> Path:
    """A small (IR-18) AdaFace-format checkpoint with random weights."""
    return write_adaface_checkpoint(tmp_path_factory.mktemp("adaface") / "adaface_ir18_random.ckpt")


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> dict[str, Path]:
    from synthetic_extraction import write_synthetic_extraction

    return write_synthetic_extraction(tmp_path_factory.mktemp("synthetic_extraction"))


def tiny_train_config(data: dict[str, Path], output_dir: Path, **overrides):
    """A training config that runs in seconds on a CPU."""
    from train_config import TrainConfig

    values = dict(adaface_checkpoint="none", adaface_arch="ir_18", part_backbone="tiny", part_weights="none",
                  face_parts_embedding_dim=16, hidden_dim=32, embedding_dim=16, batch_size=4, num_epochs=2,
                  learning_rate=3e-3, train_split=0.6, test_split=0.2, num_workers=0, progress=False,
                  face_augment_views=1, warmup_epochs=0.5, log_every_steps=1, output_dir=str(output_dir),
                  **{k: str(v) for k, v in data.items()})
    values.update(overrides)
    return TrainConfig(**values)


def one_epoch_setup(data: dict[str, Path], output_dir: Path, device: str = "cpu", **overrides):
    """What `train_one_epoch` takes, built as `run_training` builds it (one process, a tiny
    config): the config, model, optimiser, scheduler, scaler and the epoch-0 loader."""
    import torch

    import model_runner as runner
    import train_twin_verification as train
    from triplet_dataset import FaceDataIndex

    config = tiny_train_config(data, output_dir, device=device, **overrides)
    context = train.distributed.Context(device=torch.device(device))
    index = FaceDataIndex.load(data["face_parts_dataset_path"], data["tensor_dataset_path"], data["twin_pairs_path"])
    model = runner.build_model(config).to(context.device)
    cache = torch.randn(len(index.images), 2, model.global_dim)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = runner.grad_scaler(context.device, runner.autocast_dtype(config.precision, context.device))
    loader, _ = train.epoch_batches(index, index.persons, cache, config, context, 0)
    return config, model, optimizer, scheduler, scaler, loader
