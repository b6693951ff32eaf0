"""Print the parameter counts of the twin model, frozen and trainable, branch by branch.

    python count_parameters.py [--part-backbone resnet50] [--adaface-arch ir_50]
"""

from __future__ import annotations

import argparse
import sys

import torch

from cli_errors import cli_main
from combined_model import TwinVerificationModel
from face_parts_model import PART_BACKBONES
from net import ADAFACE_ARCHS


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_table(model: TwinVerificationModel) -> list[tuple[str, int, bool]]:
    """(branch, parameters, trainable) rows."""
    rows = [(f"global: AdaFace {model.config.adaface_arch} (frozen)", count(model.adaface), False)]
    for part, encoder in model.face_parts.encoders.items():
        rows.append((f"part encoder: {part} ({model.config.part_backbone})", count(encoder), True))
    rows.append(("projection", count(model.projection), True))
    return rows


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adaface-arch", choices=ADAFACE_ARCHS, default="ir_50")
    parser.add_argument("--part-backbone", choices=PART_BACKBONES, default="resnet50")
    parser.add_argument("--face-parts-embedding-dim", type=int, default=128)
    args = parser.parse_args(argv)
    with torch.device("meta"):  # shapes only: no memory, no weights needed
        model = TwinVerificationModel(adaface_arch=args.adaface_arch, part_backbone=args.part_backbone,
                                      face_parts_embedding_dim=args.face_parts_embedding_dim,
                                      adaface_checkpoint=None)
    rows = parameter_table(model)
    for name, number, _ in rows:
        print(f"{name:45s} {number:>13,}")
    frozen = sum(n for _, n, trainable in rows if not trainable)
    trainable = sum(n for _, n, is_trainable in rows if is_trainable)
    print(f"{'frozen total':45s} {frozen:>13,}\n{'trainable total':45s} {trainable:>13,}\n"
          f"{'all':45s} {frozen + trainable:>13,}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
