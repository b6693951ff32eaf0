"""AdaFace IR networks, compatible with the official AdaFace checkpoints."""

from __future__ import annotations

import numpy as np
import torch

ADAFACE_INPUT_SIZE = 112


def adaface_input_tensor(aligned_bgr: np.ndarray) -> torch.Tensor:
    """AdaFace's input contract: aligned BGR uint8 → float `(x/255 − 0.5)/0.5`, channels first.

    `aligned_bgr` is `112×112×3` (one face → `3×112×112`) or `B×112×112×3`
    (→ `B×3×112×112`), **BGR** channel order, as AdaFace was trained.
    """
    array = np.asarray(aligned_bgr)
    if array.dtype != np.uint8 or array.shape[-3:] != (ADAFACE_INPUT_SIZE, ADAFACE_INPUT_SIZE, 3):
        raise ValueError(f"expected uint8 …×112×112×3 BGR, got {array.dtype} {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0).sub_(0.5).div_(0.5)
    return tensor.movedim(-1, -3).contiguous()
