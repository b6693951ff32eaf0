"""The twin model: shapes, frozen global branch, input contracts, checkpoints."""

import urllib.error

import numpy as np
import pytest
import torch

from combined_model import CheckpointMismatchError, TwinVerificationModel
from global_branch import ADAFACE_CHECKPOINT_ENV
from cutout import PART_NAMES
from face_parts_model import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, PartWeightsError, part_encoder_input
from net import AdaFaceCheckpointError

TINY = dict(adaface_arch="ir_18", part_backbone="tiny", face_parts_embedding_dim=16, hidden_dim=32,
            embedding_dim=24)


def inputs(batch=3, crop=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    face = torch.rand(batch, 3, 112, 112, generator=generator) * 2 - 1
    parts = {p: torch.randn(batch, 3, crop, crop, generator=generator) for p in PART_NAMES}
    return face, parts


@pytest.fixture
def tiny_model(adaface_file):
    torch.manual_seed(0)
    return TwinVerificationModel(**TINY, adaface_checkpoint=str(adaface_file))


def test_output_shapes_and_unit_length(tiny_model):
    face, parts = inputs()
    embedding, global_embedding, parts_embedding, combined = tiny_model(face, parts)
    assert embedding.shape == (3, 24) and global_embedding.shape == (3, 512)
    _, projected = tiny_model(face, parts, with_projection=True)
    torch.testing.assert_close(embedding, projected)  # the default compares the projection's output
    assert parts_embedding.shape == (3, 5 * 16) and combined.shape == (3, 512 + 80)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(global_embedding.norm(dim=1), torch.ones(3))


def test_precomputed_global_embedding_gives_the_same_output(tiny_model):
    tiny_model.eval()
    face, parts = inputs()
    direct = tiny_model(face, parts).embedding
    cached = tiny_model(None, parts, global_embedding=tiny_model.embed_global(face)).embedding
    torch.testing.assert_close(direct, cached)
    with pytest.raises(ValueError, match="global_embedding"):
        tiny_model(None, parts)


def test_gradients_reach_only_trainable_parameters(tiny_model):
    face, parts = inputs()
    tiny_model.train()
    tiny_model(face, parts).embedding[:, 0].sum().backward()
    assert all(p.grad is None for p in tiny_model.adaface.parameters())
    assert all(not p.requires_grad for p in tiny_model.adaface.parameters())
    trainable = [p for n, p in tiny_model.named_parameters() if not n.startswith("adaface.")]
    assert all(p.requires_grad for p in trainable)
    assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable) == len(trainable)


def test_adaface_is_unchanged_by_training_steps(tiny_model):
    before = {k: v.clone() for k, v in tiny_model.adaface.state_dict().items()}
    parts_bn_before = tiny_model.face_parts.encoders["nose"].trunk[1].running_mean.clone()
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-2, weight_decay=0.1)
    tiny_model.train()
    assert not tiny_model.adaface.training
    for step in range(2):
        face, parts = inputs(seed=step)
        optimizer.zero_grad()
        tiny_model(face, parts).embedding[:, 0].sum().backward()
        optimizer.step()
    after = tiny_model.adaface.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert not torch.equal(parts_bn_before, tiny_model.face_parts.encoders["nose"].trunk[1].running_mean)


def test_state_dict_leaves_adaface_out_and_loads_strictly(tiny_model, adaface_file):
    state = tiny_model.state_dict()
    assert state and not any(k.startswith("adaface.") for k in state)
    other = TwinVerificationModel(**TINY, adaface_checkpoint=str(adaface_file))
    other.load_state_dict(state)
    tiny_model.eval(), other.eval()
    face, parts = inputs()
    torch.testing.assert_close(tiny_model(face, parts).embedding, other(face, parts).embedding)

    broken = dict(state)
    removed = broken.pop("projection.0.weight")
    broken["projection.9.weight"] = removed
    with pytest.raises(RuntimeError) as error:
        other.load_state_dict(broken)
    assert "projection.0.weight" in str(error.value) and "projection.9.weight" in str(error.value)
    with pytest.raises(CheckpointMismatchError, match="AdaFace"):
        other.load_state_dict({**state, "adaface.input_layer.0.weight": torch.zeros(1)})


def test_part_input_contract_is_rgb_with_imagenet_statistics():
    red_hwc = np.zeros((8, 8, 3), np.uint8)
    red_hwc[..., 0] = 255  # RGB: red is channel 0
    from_numpy = part_encoder_input(red_hwc)
    from_tensor = part_encoder_input(torch.from_numpy(red_hwc).permute(2, 0, 1).unsqueeze(0))
    expected = [(1 - IMAGENET_MEAN_RGB[0]) / IMAGENET_STD_RGB[0],
                -IMAGENET_MEAN_RGB[1] / IMAGENET_STD_RGB[1], -IMAGENET_MEAN_RGB[2] / IMAGENET_STD_RGB[2]]
    assert from_numpy.shape == (3, 8, 8) and from_tensor.shape == (1, 3, 8, 8)
    for channel, value in enumerate(expected):
        assert torch.allclose(from_numpy[channel], torch.tensor(value))
        assert torch.allclose(from_tensor[0, channel], torch.tensor(value))
    with pytest.raises(ValueError):
        part_encoder_input(torch.zeros(1, 3, 8, 8))  # float: already normalised or wrong type


def test_missing_part_is_named(tiny_model):
    face, parts = inputs()
    del parts["chin"]
    with pytest.raises(KeyError, match="chin"):
        tiny_model(face, parts)


def test_deployable_checkpoint_round_trip_checks_adaface_hash(tiny_model, adaface_file, tmp_path):
    checkpoint = tiny_model.deployable_checkpoint(threshold=0.5)
    assert set(checkpoint) == {"model_state_dict", "model_config", "frozen_files", "threshold"}
    assert checkpoint["frozen_files"]["global"]["sha256"]
    torch.save(checkpoint, tmp_path / "best.pth")
    restored = TwinVerificationModel.from_checkpoint(tmp_path / "best.pth")
    tiny_model.eval()
    face, parts = inputs()
    torch.testing.assert_close(restored(face, parts).embedding, tiny_model(face, parts).embedding)
    assert (tmp_path / "best.pth").stat().st_size < adaface_file.stat().st_size / 10  # no copy of AdaFace inside

    from conftest import write_adaface_checkpoint
    other = write_adaface_checkpoint(tmp_path / "other.ckpt", seed=1)
    with pytest.raises(CheckpointMismatchError, match="sha256"):
        TwinVerificationModel.from_checkpoint(tmp_path / "best.pth", adaface_checkpoint=str(other))


def test_untrained_global_branch_is_reproducible_and_labelled():
    a = TwinVerificationModel(**TINY, adaface_checkpoint=None)
    b = TwinVerificationModel(**TINY, adaface_checkpoint=None)
    assert a.global_branch_label == "UNTRAINED IR-18 (random weights)"
    assert all(torch.equal(x, y) for x, y in zip(a.adaface.state_dict().values(), b.adaface.state_dict().values()))
    restored = TwinVerificationModel.from_checkpoint(a.deployable_checkpoint())
    assert restored.config.adaface_checkpoint is None


def test_missing_adaface_file_says_where_it_goes(tmp_path, monkeypatch):
    monkeypatch.setenv(ADAFACE_CHECKPOINT_ENV, str(tmp_path / "adaface_ir50_ms1mv2.ckpt"))
    with pytest.raises(AdaFaceCheckpointError, match="adaface_ir50_ms1mv2.ckpt"):
        TwinVerificationModel(**TINY)


def _offline(url, destination, hash_prefix=None, progress=True):
    raise urllib.error.URLError("no network in tests")


def test_imagenet_weights_offline_and_not_cached_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(PartWeightsError, match=f"no network in tests.*put https://.*resnet18-f37072fd.pth at "
                                               f"{expected}"):
        TwinVerificationModel(**{**TINY, "part_backbone": "resnet18"}, adaface_checkpoint=None,
                              part_weights="imagenet")


def test_imagenet_weights_in_torch_home_are_used_without_a_download(monkeypatch, tmp_path):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = TwinVerificationModel(**{**TINY, "part_backbone": "resnet18"}, adaface_checkpoint=None,
                                  part_weights="imagenet")
    assert torch.equal(model.face_parts.encoders["nose"].trunk.conv1.weight, reference.conv1.weight)


def test_imagenet_weights_are_downloaded_into_the_cache_with_a_hash_check(monkeypatch, tmp_path):
    """The default choice downloads torchvision's file once (the hash prefix of its name is
    checked), and later models read the cached copy."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = torchvision.models.resnet18(weights=None)
    downloads = []

    def download(url, destination, hash_prefix=None, progress=True):
        downloads.append((url, hash_prefix))
        torch.save(reference.state_dict(), destination)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    model = TwinVerificationModel(**{**TINY, "part_backbone": "resnet18"}, adaface_checkpoint=None,
                                  part_weights="imagenet")
    assert downloads == [(torchvision.models.ResNet18_Weights.DEFAULT.url, "f37072fd")]  # once for five parts
    assert (tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth").is_file()
    assert torch.equal(model.face_parts.encoders["chin"].trunk.conv1.weight, reference.conv1.weight)


def test_imagenet_weights_load_from_the_torch_cache(monkeypatch, tmp_path):
    import torchvision
    (tmp_path / "checkpoints").mkdir()
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    model = TwinVerificationModel(**{**TINY, "part_backbone": "resnet18"}, adaface_checkpoint=None,
                                  part_weights="imagenet")
    trunk = model.face_parts.encoders["mouth"].trunk
    assert torch.equal(trunk.conv1.weight, reference.conv1.weight)


def test_readme_usage_with_default_location(adaface_file, tmp_path, monkeypatch):
    """`TwinVerificationModel()` + `load_state_dict(ckpt['model_state_dict'])` as the README shows,
    for a full-size model (the AdaFace file found through the default-location variable)."""
    monkeypatch.setenv(ADAFACE_CHECKPOINT_ENV, str(adaface_file))
    trained = TwinVerificationModel(adaface_arch="ir_18")
    torch.save(trained.deployable_checkpoint(), tmp_path / "best.pth")
    model = TwinVerificationModel(adaface_arch="ir_18")
    checkpoint = torch.load(tmp_path / "best.pth", weights_only=True)
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval()
    face, parts = inputs(batch=1, crop=64)
    features1, _, _, _ = model(face, parts)
    features2, _, _, _ = trained.eval()(face, parts)
    similarity = torch.nn.functional.cosine_similarity(features1, features2)
    assert similarity.item() == pytest.approx(1.0, abs=1e-5)


def test_full_size_forward_and_backward_on_cpu():
    model = TwinVerificationModel(adaface_checkpoint=None)  # IR-50 + five ResNet50, 1152→512→256
    assert sum(p.numel() for p in model.adaface.parameters()) == 43_585_600
    model.train()
    face, parts = inputs(batch=2, crop=224)
    out = model(face, parts)
    assert out.embedding.shape == (2, 256) and out.combined.shape == (2, 1152)
    out.embedding[:, 0].sum().backward()
    assert model.projection[0].weight.grad is not None
    assert model.face_parts.encoders["left_eye"].trunk.conv1.weight.grad is not None


def test_parameter_count_script(capsys):
    import count_parameters

    count_parameters.main([])
    printed = capsys.readouterr().out
    assert "43,585,600" in printed.splitlines()[0]
    assert "trainable total" in printed and "118,928,144" in printed


@pytest.mark.parametrize("backbone,crop,grid", [("tiny", 64, 8), ("resnet18", 224, 7), ("resnet34", 224, 7),
                                                ("resnet50", 224, 7)])
def test_spatial_head_keeps_the_map_and_gradients_reach_it(backbone, crop, grid):
    from face_parts_model import SPATIAL_HEAD, PartEncoder

    torch.manual_seed(0)
    encoder = PartEncoder(backbone, embedding_dim=12, head="spatial").train()
    crops = torch.randn(2, 3, crop, crop)
    feature_map = encoder.trunk(crops)
    assert feature_map.shape[-2:] == (grid, grid)  # the trunk's map, e.g. 7×7 for a ResNet at 224 px
    conv, pool, flatten = encoder.reduce
    channels = SPATIAL_HEAD[backbone][0]
    assert conv.kernel_size == (1, 1) and conv.out_channels == channels
    assert encoder.reduce(feature_map).shape == (2, channels * grid * grid)
    assert encoder.head.in_features == channels * grid * grid
    out = encoder(crops)
    assert out.shape == (2, 12)
    out.sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert encoder.head.weight.grad.abs().sum() > 0
    if backbone != "tiny":
        assert encoder.trunk.conv1.weight.grad.abs().sum() > 0


def test_pool_head_and_the_head_choice_in_checkpoints(adaface_file, tmp_path):
    from face_parts_model import PartEncoder

    pooled = PartEncoder("tiny", embedding_dim=12, head="pool")
    assert pooled.head.in_features == 128 and pooled(torch.randn(2, 3, 40, 40)).shape == (2, 12)
    with pytest.raises(ValueError, match="part head"):
        PartEncoder("tiny", head="attention")
    model = TwinVerificationModel(**TINY, adaface_checkpoint=str(adaface_file), part_head="pool")
    torch.save(model.deployable_checkpoint(), tmp_path / "best.pth")
    rebuilt = TwinVerificationModel.from_checkpoint(tmp_path / "best.pth")
    assert rebuilt.config.part_head == "pool"
    assert rebuilt.face_parts.encoders["nose"].head.in_features == 128


def structured_global_embeddings(people=4, images=4, seed=0):
    """Unit-length embeddings of a few people, several noisy images each."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(people, 512, generator=generator), dim=1)
    noise = torch.nn.functional.normalize(torch.randn(people * images, 512, generator=generator), dim=1)
    return torch.nn.functional.normalize(centres.repeat_interleave(images, 0) + 0.7 * noise, dim=1)


def test_global_skip_starts_from_the_recognisers_ranking():
    global_embeddings = structured_global_embeddings()
    parts = {r: torch.randn(len(global_embeddings), 3, 32, 32) for r in PART_NAMES}
    mask = ~torch.eye(len(global_embeddings), dtype=torch.bool)
    recogniser = (global_embeddings @ global_embeddings.T)[mask]
    agreement = {}
    for skip in (True, False):
        torch.manual_seed(0)
        model = TwinVerificationModel(part_backbone="tiny", adaface_checkpoint=None, face_parts_embedding_dim=16,
                                      hidden_dim=64, embedding_dim=128, global_skip=skip).eval()
        with torch.no_grad():
            embedding = model(None, parts, global_embedding=global_embeddings).embedding
        agreement[skip] = torch.corrcoef(torch.stack([recogniser, (embedding @ embedding.T)[mask]]))[0, 1]
    assert agreement[True] > 0.9 > agreement[False]


def test_global_skip_is_trained_saved_and_absent_from_older_checkpoints(adaface_file, tmp_path):
    torch.manual_seed(0)
    model = TwinVerificationModel("ir_18", part_backbone="tiny", adaface_checkpoint=adaface_file,
                                  face_parts_embedding_dim=16, hidden_dim=32, embedding_dim=16)
    assert model.config.global_skip and model.global_skip.weight.requires_grad
    checkpoint = model.deployable_checkpoint(part_crop_size=32)
    assert "global_skip.weight" in checkpoint["model_state_dict"]
    assert TwinVerificationModel.from_checkpoint(checkpoint).global_skip is not None
    # A checkpoint from before the skip existed: no key, no weight; it loads without one.
    older = TwinVerificationModel("ir_18", part_backbone="tiny", adaface_checkpoint=adaface_file,
                                  face_parts_embedding_dim=16, hidden_dim=32, embedding_dim=16, global_skip=False)
    saved = older.deployable_checkpoint(part_crop_size=32)
    del saved["model_config"]["global_skip"]
    assert TwinVerificationModel.from_checkpoint(saved).global_skip is None


def test_highpass_keeps_local_detail_and_drops_the_light():
    from face_parts_model import highpass, highpass_window

    assert (highpass_window(64), highpass_window(112), highpass_window(224)) == (7, 13, 25)
    generator = torch.Generator().manual_seed(0)
    crops = torch.randn(2, 3, 64, 64, generator=generator)
    # A brighter or tinted photo (a constant per channel) and a gentle gradient of light across
    # the crop change nothing away from the borders.
    tint = torch.tensor([0.5, -0.3, 0.2]).view(1, 3, 1, 1)
    gradient = torch.linspace(-0.2, 0.2, 64).view(1, 1, 1, 64)
    assert torch.allclose(highpass(crops + tint), highpass(crops), atol=1e-5)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    assert torch.allclose(highpass(crops + gradient)[inner], highpass(crops)[inner], atol=1e-5)
    # A dark spot stays, where it is.
    spotted = crops.clone()
    spotted[:, :, 30:33, 40:43] -= 2.0
    change = (highpass(spotted) - highpass(crops)).abs().sum((0, 1))
    assert change[30:33, 40:43].mean() > 10 * change[:20, :20].mean()


def test_part_input_choice_reaches_the_trunk_and_checkpoints(adaface_file, tmp_path):
    from face_parts_model import PartEncoder

    torch.manual_seed(0)
    highpassed, plain = PartEncoder("tiny", 12, part_input="highpass"), PartEncoder("tiny", 12, part_input="rgb")
    plain.load_state_dict(highpassed.state_dict())
    crops = torch.randn(2, 3, 64, 64)
    brighter = crops + 0.5
    highpassed.eval(), plain.eval()
    assert torch.allclose(highpassed(crops), highpassed(brighter), atol=1e-5)
    assert not torch.allclose(plain(crops), plain(brighter), atol=1e-3)
    with pytest.raises(ValueError, match="part input"):
        PartEncoder("tiny", part_input="edges")
    model = TwinVerificationModel(**TINY, adaface_checkpoint=str(adaface_file), part_input="rgb")
    saved = model.deployable_checkpoint()
    assert TwinVerificationModel.from_checkpoint(saved).config.part_input == "rgb"
    # A checkpoint from before the choice existed: its trunks saw the crop as it is.
    del saved["model_config"]["part_input"]
    rebuilt = TwinVerificationModel.from_checkpoint(saved)
    assert rebuilt.config.part_input == "rgb" and rebuilt.face_parts.encoders["nose"].part_input == "rgb"
    assert TwinVerificationModel(**TINY, adaface_checkpoint=str(adaface_file)).config.part_input == "highpass"


def test_parts_decision_compares_the_part_embeddings_and_is_kept_in_checkpoints(adaface_file):
    torch.manual_seed(0)
    model = TwinVerificationModel(**TINY, adaface_checkpoint=str(adaface_file), decision_embedding="parts").eval()
    assert model.decision_dim == 5 * 16
    face, parts = inputs()
    output, projected = model(face, parts, with_projection=True)
    # each region unit-length, concatenated, unit-length again: every region weighs the same
    torch.testing.assert_close(output.embedding, output.parts_embedding / 5 ** 0.5)
    torch.testing.assert_close(output.embedding.norm(dim=1), torch.ones(3))
    assert projected.shape == (3, 24)
    # The global embedding does not enter the compared embedding (the recogniser gate judges it).
    other_global = torch.nn.functional.normalize(torch.randn(3, 512), dim=1)
    torch.testing.assert_close(model(None, parts, global_embedding=other_global).embedding, output.embedding)
    saved = model.deployable_checkpoint()
    rebuilt = TwinVerificationModel.from_checkpoint(saved)
    assert rebuilt.config.decision_embedding == "parts"
    torch.testing.assert_close(rebuilt(face, parts).embedding, output.embedding)
    # A checkpoint from before the choice existed compared the projection's output.
    del saved["model_config"]["decision_embedding"]
    assert TwinVerificationModel.from_checkpoint(saved).config.decision_embedding == "combined"
    with pytest.raises(ValueError, match="decision_embedding"):
        TwinVerificationModel(**TINY, adaface_checkpoint=str(adaface_file), decision_embedding="global")


def test_both_decision_averages_the_parts_and_projection_similarities(adaface_file):
    torch.manual_seed(0)
    model = TwinVerificationModel(**TINY, adaface_checkpoint=str(adaface_file), decision_embedding="both").eval()
    assert model.decision_dim == 5 * 16 + 24
    face, parts = inputs(batch=4)
    output, projected = model(face, parts, with_projection=True)
    torch.testing.assert_close(output.embedding.norm(dim=1), torch.ones(4))
    parts_unit = torch.nn.functional.normalize(output.parts_embedding, dim=1)
    cosine = output.embedding @ output.embedding.T
    torch.testing.assert_close(cosine, (parts_unit @ parts_unit.T + projected @ projected.T) / 2)
    assert TwinVerificationModel.from_checkpoint(model.deployable_checkpoint()).config.decision_embedding == "both"
