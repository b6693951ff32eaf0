"""Part-crop augmentation as batched tensor operations on the training device.

The loader only draws each crop's parameters (eight numbers, from the sample's own
generator seeded by `(seed, epoch, sample, role)`) and hands over the plain uint8
crops; the warps and colour changes then run for the whole batch at once on the GPU.
The result is a pure function of the crops and the parameters, so a resumed run
augments exactly as an uninterrupted one.

Ranges at strength 1.0 (each scales linearly with the strength), the same as the CPU
path `triplet_dataset.augment_image`:
- rotation ±8° about the crop centre, zoom ×(1 ± 0.08), shift ±4% of the side on each
  axis, reflected borders, bilinear sampling;
- gamma 1 ± 0.15, then contrast ×(1 ± 0.2) about mid-grey, then brightness ±20 levels;
- Gaussian blur with probability 0.2 (σ 0.3–1.0 px).
Never a flip: moles and scars have a side.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PARAMETERS = ("angle_deg", "zoom", "shift_x", "shift_y", "gamma", "contrast", "brightness", "blur_sigma")
DEGREES, ZOOM, SHIFT = 8.0, 0.08, 0.04
GAMMA, CONTRAST, BRIGHTNESS = 0.15, 0.2, 20.0
BLUR_PROBABILITY, BLUR_SIGMA = 0.2, (0.3, 1.0)
IDENTITY = np.array([0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=np.float32)


def draw_parameters(rng: np.random.Generator, count: int, strength: float = 1.0) -> np.ndarray:
    """`count×8` float32 augmentation parameters (columns as `PARAMETERS`), one row per crop."""
    rows = np.empty((count, len(PARAMETERS)), dtype=np.float32)
    for row in rows:
        row[0] = rng.uniform(-DEGREES, DEGREES) * strength
        row[1] = 1 + rng.uniform(-ZOOM, ZOOM) * strength
        row[2:4] = rng.uniform(-SHIFT, SHIFT, 2) * strength
        row[4] = 1 + rng.uniform(-GAMMA, GAMMA) * strength
        row[5] = 1 + rng.uniform(-CONTRAST, CONTRAST) * strength
        row[6] = rng.uniform(-BRIGHTNESS, BRIGHTNESS) * strength
        row[7] = rng.uniform(*BLUR_SIGMA) if rng.random() < BLUR_PROBABILITY * strength else 0.0
    return rows


def _sampling_grid(params: torch.Tensor, size: int) -> torch.Tensor:
    """Output → input sampling positions (normalised, `align_corners=False`) for each crop.

    The crop is rotated by `angle` and zoomed by `zoom` about its centre, then shifted by
    `shift × side`; the grid is that map inverted, as `grid_sample` wants.
    """
    angle = params[:, 0] * (math.pi / 180)
    zoom = params[:, 1]
    shift = params[:, 2:4] * 2  # a fraction of the side → normalised units (the side spans 2)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # input = R(−angle)/zoom · (output − shift)
    theta = torch.stack([torch.stack([cos, sin, -(cos * shift[:, 0] + sin * shift[:, 1])], 1),
                         torch.stack([-sin, cos, -(-sin * shift[:, 0] + cos * shift[:, 1])], 1)], 1)
    return F.affine_grid(theta, [len(params), 1, size, size], align_corners=False)


def _blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one σ per image (σ = 0: unchanged)."""
    radius = math.ceil(3 * BLUR_SIGMA[1])
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    safe = sigma.clamp(min=1e-3).view(-1, 1)
    kernel = torch.exp(-0.5 * (offsets / safe) ** 2)
    kernel = kernel / kernel.sum(1, keepdim=True)
    identity = (offsets == 0).to(images.dtype).expand_as(kernel)
    kernel = torch.where((sigma > 0).view(-1, 1), kernel, identity)
    count, channels, height, width = images.shape
    weights = kernel.repeat_interleave(channels, 0)  # one kernel per image channel
    flat = images.reshape(1, count * channels, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), weights.view(-1, 1, 1, len(offsets)),
                    groups=count * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), weights.view(-1, 1, len(offsets), 1),
                    groups=count * channels)
    return flat.view(count, channels, height, width)


@torch.no_grad()
def augment_batch(crops_uint8: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Augment uint8 crops `N×3×S×S` (any device) with parameters `N×8`; returns uint8 `N×3×S×S`.

    Give `params` as the loader made them, on the CPU: whether any crop is blurred is read
    there, so the device is never waited for.
    """
    if crops_uint8.dtype != torch.uint8 or crops_uint8.dim() != 4:
        raise ValueError(f"expected uint8 N×3×S×S crops, got {crops_uint8.dtype} {tuple(crops_uint8.shape)}")
    any_blur = bool((params[:, 7] > 0).any())  # on the CPU: no device synchronisation
    params = params.to(crops_uint8.device, torch.float32, non_blocking=True)
    images = crops_uint8.float()
    size = images.shape[-1]
    images = F.grid_sample(images, _sampling_grid(params, size), mode="bilinear", padding_mode="reflection",
                           align_corners=False)
    gamma, contrast, brightness = (params[:, k].view(-1, 1, 1, 1) for k in (4, 5, 6))
    images = ((images.clamp(0, 255) / 255) ** gamma * 255 - 128) * contrast + 128 + brightness
    images = images.clamp(0, 255)
    if any_blur:
        images = _blur(images, params[:, 7])
    return images.round_().clamp_(0, 255).to(torch.uint8)
