"""Virtual twins: a synthetic sibling for a training identity, different only by persistent local marks.

A twin dataset holds few twin pairs, and each pair shows the model only its own few
differences. Any identity can lend its photos to one more: a *virtual twin* whose every
image is the identity's image with the same small, persistent changes painted on the
skin. In a family batch (`family_batches.py`) the virtual twin joins the identity's family
as a sibling, so online mining sets it against the identity image for image: the same
face, the same captures, and only the marks to tell them apart. What the model learns
from that is general: a local detail that persists in every photo of a person is
identity, whatever its kind.

The marks are deliberately generic, not a copy of any twin simulator's: soft-edged spots
of random size, shape and orientation (round, oval, streak), small clusters of dots, each
darker, lighter or tinted, at random places of a random region. They are drawn in the
coordinates of the region crops. Crops are aligned by the face landmarks, so a spot at one
place of a crop sits on one place of the skin in every photo; the part augmentation that
follows moves it together with the face.

Pure functions of a seeded generator: the marks of a virtual twin are a function of the
training seed, epoch and step, like the rest of a family batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("spot", "oval", "streak", "cluster")
CHANGES = ("darker", "lighter", "tint")


@dataclass(frozen=True)
class Mark:
    """One mark in a region crop; positions and sizes are fractions of the crop side."""

    region: int                  # index into the crops' regions
    centre: tuple[float, float]  # (x, y) in 0..1
    size: float                  # standard deviation of the soft edge, along the long axis
    aspect: float                # long axis / short axis (1 = round)
    angle: float                 # radians
    dots: int                    # 1 for a single spot, more for a cluster
    spread: float                # how far a cluster's dots lie from the centre
    change: str                  # one of CHANGES
    colour: tuple[float, float, float]  # target RGB of a tint, 0..255
    strength: float              # peak opacity, 0..1
    seed: int                    # places a cluster's dots


def draw_marks(rng: np.random.Generator, regions: int, max_marks: int = 3) -> tuple[Mark, ...]:
    """1..`max_marks` random marks spread over `regions` region crops."""
    marks = []
    for _ in range(int(rng.integers(1, max_marks + 1))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        change = CHANGES[int(rng.integers(len(CHANGES)))]
        aspect = {"spot": 1.0, "oval": float(rng.uniform(1.3, 2.5)), "streak": float(rng.uniform(4.0, 8.0)),
                  "cluster": 1.0}[shape]
        size = float(rng.uniform(0.012, 0.035)) if shape == "cluster" else float(rng.uniform(0.02, 0.07))
        marks.append(Mark(
            region=int(rng.integers(regions)), centre=(float(rng.uniform(0.12, 0.88)), float(rng.uniform(0.12, 0.88))),
            size=size, aspect=aspect, angle=float(rng.uniform(0, np.pi)),
            dots=int(rng.integers(3, 7)) if shape == "cluster" else 1, spread=float(rng.uniform(0.04, 0.1)),
            change=change, colour=tuple(float(c) for c in rng.uniform([90, 20, 20], [200, 110, 90])),
            strength=float(rng.uniform(0.25, 0.7)), seed=int(rng.integers(2**31))))
    return tuple(marks)


def _opacity(mark: Mark, side: int) -> np.ndarray:
    """`side×side` float opacity of one mark (0..strength)."""
    grid = (np.arange(side, dtype=np.float32) + 0.5) / side
    x, y = np.meshgrid(grid, grid)
    centres = [mark.centre]
    if mark.dots > 1:
        offsets = np.random.default_rng(mark.seed).normal(0.0, mark.spread, size=(mark.dots, 2))
        centres = [(mark.centre[0] + dx, mark.centre[1] + dy) for dx, dy in offsets]
    cos, sin = np.cos(mark.angle), np.sin(mark.angle)
    long_sd, short_sd = mark.size, mark.size / mark.aspect
    alpha = np.zeros((side, side), dtype=np.float32)
    for cx, cy in centres:
        u = (x - cx) * cos + (y - cy) * sin
        v = -(x - cx) * sin + (y - cy) * cos
        alpha = np.maximum(alpha, np.exp(-0.5 * ((u / long_sd) ** 2 + (v / short_sd) ** 2)))
    return mark.strength * alpha


def paint_marks(crops_rgb: np.ndarray, marks: tuple[Mark, ...]) -> np.ndarray:
    """A copy of uint8 `R×S×S×3` RGB region crops with `marks` painted on."""
    painted = crops_rgb.astype(np.float32)
    side = crops_rgb.shape[1]
    for mark in marks:
        if mark.region >= len(painted):
            raise ValueError(f"mark on region {mark.region}, but the crops have {len(painted)} regions")
        alpha = _opacity(mark, side)[..., None]
        crop = painted[mark.region]
        if mark.change == "darker":
            target = crop * 0.45
        elif mark.change == "lighter":
            target = crop + (255.0 - crop) * 0.5
        else:
            target = np.broadcast_to(np.array(mark.colour, dtype=np.float32), crop.shape)
        painted[mark.region] = crop * (1 - alpha) + target * alpha
    return np.clip(np.rint(painted), 0, 255).astype(np.uint8)
