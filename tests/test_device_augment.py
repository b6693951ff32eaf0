"""Device augmentation: deterministic, identity at strength 0, the documented ranges and directions."""

import numpy as np
import pytest
import torch

import device_augment as da


def _crops(count=4, size=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (count, 3, size, size), dtype=np.uint8))


def test_parameters_stay_in_the_documented_ranges():
    params = da.draw_parameters(np.random.default_rng(0), 4000, strength=1.0)
    columns = dict(zip(da.PARAMETERS, params.T))
    assert np.abs(columns["angle_deg"]).max() <= 8 and np.abs(columns["angle_deg"]).max() > 7.5
    assert np.abs(columns["zoom"] - 1).max() <= 0.08 + 1e-6
    assert np.abs(columns["shift_x"]).max() <= 0.04 + 1e-6 and np.abs(columns["shift_y"]).max() <= 0.04 + 1e-6
    assert np.abs(columns["gamma"] - 1).max() <= 0.15 + 1e-6
    assert np.abs(columns["contrast"] - 1).max() <= 0.2 + 1e-6
    assert np.abs(columns["brightness"]).max() <= 20 + 1e-4
    blurred = columns["blur_sigma"][columns["blur_sigma"] > 0]
    assert 0.17 < len(blurred) / 4000 < 0.23 and blurred.min() >= 0.3 and blurred.max() <= 1.0
    half = da.draw_parameters(np.random.default_rng(0), 4000, strength=0.5)
    assert np.abs(half[:, 0]).max() <= 4.0


def test_strength_zero_is_the_identity():
    crops = _crops()
    params = torch.from_numpy(da.draw_parameters(np.random.default_rng(1), len(crops), strength=0.0))
    assert torch.equal(params, torch.from_numpy(np.tile(da.IDENTITY, (len(crops), 1))))
    assert torch.equal(da.augment_batch(crops, params), crops)


def test_same_parameters_same_result_and_each_crop_its_own():
    crops = _crops(6)
    params = torch.from_numpy(da.draw_parameters(np.random.default_rng([5, 2, 1, 3]), len(crops)))
    first, again = da.augment_batch(crops, params), da.augment_batch(crops.clone(), params.clone())
    assert torch.equal(first, again) and first.dtype == torch.uint8
    alone = torch.cat([da.augment_batch(crops[k:k + 1], params[k:k + 1]) for k in range(len(crops))])
    assert torch.equal(first, alone)  # a crop's result does not depend on its batch


def _with(**values):
    row = da.IDENTITY.copy()
    for name, value in values.items():
        row[da.PARAMETERS.index(name)] = value
    return torch.from_numpy(row[None])


def _dot(size=33, y=16, x=16):
    image = torch.zeros(1, 3, size, size, dtype=torch.uint8)
    image[..., y, x] = 255
    return image


def _centre(image):
    weights = image[0, 0].float()
    ys, xs = torch.meshgrid(torch.arange(image.shape[-2]).float(), torch.arange(image.shape[-1]).float(),
                            indexing="ij")
    return (weights * ys).sum() / weights.sum(), (weights * xs).sum() / weights.sum()


def test_shift_moves_content_by_the_fraction_of_the_side():
    moved = da.augment_batch(_dot(), _with(shift_x=4 / 33, shift_y=-2 / 33))
    y, x = _centre(moved)
    assert float(x) == pytest.approx(20, abs=0.05) and float(y) == pytest.approx(14, abs=0.05)


def test_rotation_and_zoom_turn_about_the_centre():
    zoomed = da.augment_batch(_dot(y=16, x=24), _with(zoom=1.25))
    assert [float(v) for v in _centre(zoomed)] == pytest.approx([16, 26], abs=0.1)
    turned = da.augment_batch(_dot(y=16, x=24), _with(angle_deg=90.0))
    y, x = _centre(turned)  # a quarter turn takes a point right of centre to straight above or below it
    assert float(x) == pytest.approx(16, abs=0.1) and abs(float(y) - 16) == pytest.approx(8, abs=0.1)


def test_colour_operations_follow_the_formula():
    crops = torch.full((1, 3, 8, 8), 100, dtype=torch.uint8)
    out = da.augment_batch(crops, _with(gamma=1.1, contrast=1.2, brightness=7.0))
    expected = round(((100 / 255) ** 1.1 * 255 - 128) * 1.2 + 128 + 7)
    assert torch.all(out == expected)


def test_blur_softens_edges_only_where_asked():
    crops = torch.cat([_dot(), _dot()])
    out = da.augment_batch(crops, torch.cat([_with(blur_sigma=1.0), _with()]))
    assert out[0, 0, 16, 16] < 255 and out[0, 0, 16, 17] > 0
    assert torch.equal(out[1], crops[1])


def test_runs_on_a_meta_device_without_host_synchronisation():
    """The whole op chain exists for tensors on another device (here `meta`, standing in for CUDA):
    nothing in it reads values back to the host."""
    crops = torch.empty((2, 3, 16, 16), dtype=torch.uint8, device="meta")
    params = torch.from_numpy(da.draw_parameters(np.random.default_rng(0), 2))
    params[:, 7] = 0.6
    out = da.augment_batch(crops, params)
    assert out.device.type == "meta" and out.shape == crops.shape and out.dtype == torch.uint8
