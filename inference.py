"""Twin verification with a trained model: embed photos, compare two, or embed a folder.

    python inference.py IMAGE_A IMAGE_B --checkpoint best.pth [--json]
    python inference.py --embed PHOTOS_DIR -o embeddings.npz --checkpoint best.pth

A photo goes through the same steps as in extraction and training (`face_images`): decode
(EXIF applied) → landmarks of the largest face → RGB crops of the regions the checkpoint records
(the five parts for older checkpoints) at its
`part_crop_size` + the aligned BGR face → unit-length embedding. Two photos show the same
person when the cosine similarity of their embeddings is at least the threshold stored in
the checkpoint and, where the checkpoint holds a recogniser gate, the global model's own
similarity of the two faces is at least that gate (below it the recogniser alone already
tells them apart; the twin model decides between look-alikes). Exit status: 0 on a decision (or every photo embedded), 1 on bad input
(the message names the file), 2 on bad arguments, 3 when `--embed` could not embed some photos
(`cli_errors` lists every code). `--embed` never replaces an existing output with an empty one.

The original AdaFace helpers for the global branch alone are kept: `load_pretrained_model`,
`to_input` and `adaface_feature`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
import torch

from atomic_files import write_bytes_atomic
from cli_errors import EXIT_OK, EXIT_SOME_FAILED, ExpectedError, cli_main
from combined_model import CheckpointMismatchError, TwinVerificationModel, read_checkpoint
from distributed import resolve_device
from face_images import (DEFAULT_LANDMARKER_MODEL, DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, FaceInputs,
                         FaceLandmarkDetector, ImageDecodeError, NoFaceError, face_inputs, read_image)
from face_parts_model import part_encoder_input
from global_branch import default_global_model
import mark_comparison as mc
from net import IRBackbone, adaface_input_tensor, load_adaface
import verification_pairs as vp

IMAGE_ERRORS = (ImageDecodeError, NoFaceError)  # a bad photo: reported, never a crash
ImageSource = Union[str, os.PathLike, np.ndarray]  # a photo file, or decoded RGB uint8 H×W×3


class NoThresholdError(ExpectedError, ValueError):
    """A decision was asked for, but the checkpoint holds no threshold."""


class NonFiniteEmbeddingError(ExpectedError, ValueError):
    """The model produced NaN or infinity for a photo: no decision can be made from it."""


# ---- the AdaFace global branch alone (the original AdaFace inference helpers) ----------------

def load_pretrained_model(architecture: str = "ir_50", checkpoint: str | os.PathLike | None = None,
                          trust_checkpoint: bool = False) -> IRBackbone:
    """AdaFace in eval mode, from `checkpoint` or `default_global_model()` (the IR-50 file
    in `pretrained/`, unless `$TWIN_ADAFACE_CHECKPOINT` points elsewhere)."""
    return load_adaface(checkpoint or default_global_model(), architecture, trust_checkpoint)


def to_input(pil_rgb_image) -> torch.Tensor:
    """An aligned 112×112 PIL RGB face → `1×3×112×112` AdaFace input (**BGR**, `(x/255−0.5)/0.5`)."""
    rgb = np.asarray(pil_rgb_image.convert("RGB"))
    return adaface_input_tensor(rgb[:, :, ::-1])[None]


@torch.no_grad()
def adaface_feature(model: IRBackbone, input_tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """AdaFace on `to_input` tensors: returns (feature B×512, unit length; norm B×1, its raw L2 norm)."""
    return model(input_tensor)


# ---- the twin model ---------------------------------------------------------------------------

def load_twin_checkpoint(path: str | os.PathLike, adaface_checkpoint: str | None = None,
                         device: str | torch.device = "cpu",
                         trust_checkpoint: bool = False) -> tuple[TwinVerificationModel, dict[str, Any]]:
    """The model of a `best.pth` (eval mode, on `device`) and the checkpoint's other fields.
    `trust_checkpoint` allows full unpickling of an AdaFace file that weights-only loading refuses."""
    path = Path(path)
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint.get("part_crop_size"), int):
        raise CheckpointMismatchError(f"{path}: no integer 'part_crop_size'; inference needs the best.pth "
                                      "that training writes (checkpoints/best.pth)")
    for key in ("threshold", "recogniser_gate", "recogniser_weight", "mark_weight"):
        value = checkpoint.get(key)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            raise CheckpointMismatchError(f"{path}: its {key} {value!r} is not a finite number")
    try:
        model = TwinVerificationModel.from_checkpoint(checkpoint, adaface_checkpoint,
                                                      trust_checkpoint=trust_checkpoint)
    except CheckpointMismatchError as error:
        raise CheckpointMismatchError(f"{path}: {error}") from None
    info = {k: v for k, v in checkpoint.items() if k != "model_state_dict"}
    return model.to(device).eval(), info


@dataclass(frozen=True)
class Verification:
    similarity: float   # the decision score: (1 − m) · ((1 − w) · twin + w · recogniser) + m · marks
    threshold: float    # same person when similarity ≥ threshold (and the pair passes the recogniser's gate)
    same_person: bool
    global_branch: str  # the global model the twin model was built on (AdaFace IR-50, an ONNX file's name)
    threshold_rule: str | None = None  # how the threshold was chosen (e.g. the validation twin FAR)
    recogniser_similarity: float | None = None  # the global model's own cosine similarity of the two faces
    recogniser_gate: float | None = None  # below it, different people whatever the similarity (None: no gate)
    recogniser_weight: float = 0.0  # w: the recogniser's share of the decision score (chosen in validation)
    twin_similarity: float | None = None  # cosine similarity of the twin model's two embeddings
    mark_weight: float = 0.0  # m: the mark comparison's share of the decision score (chosen in validation)
    mark_similarity: float | None = None  # the mark comparison's similarity (mark_comparison.py); None: not used

    @property
    def decision(self) -> str:
        return "same person" if self.same_person else "different people"


@dataclass(frozen=True)
class EmbeddingResults:
    """What `embed_each` gives: rows for the photos that worked, reasons for those that did not."""

    embeddings: np.ndarray           # float32 len(ok)×D, unit length
    ok: list[int]                    # index into the input of each row
    failures: list[tuple[int, str]]  # (index into the input, message naming the photo)


class TwinVerifier:
    """A trained twin model and one landmarker, loaded once. Use as a context manager (or `close()`)."""

    def __init__(self, model: TwinVerificationModel, detector: FaceLandmarkDetector, part_crop_size: int,
                 threshold: float | None, global_branch: str, source: str = "<model>",
                 threshold_rule: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 recogniser_gate: float | None = None, recogniser_weight: float = 0.0,
                 mark_comparison: dict[str, Any] | None = None, mark_weight: float = 0.0):
        """`max_pixels`: larger photos are refused before they are decoded. `recogniser_gate`: pairs
        whose global similarity is below it are different people (training's `recogniser_gate`).
        `recogniser_weight`: the recogniser's similarity's share of the decision score.
        `mark_comparison` (a checkpoint's: the canonical face and the scale) and `mark_weight`: the
        mark comparison's share of it (used only when both are given and the weight is above 0)."""
        self.model, self.detector = model.eval(), detector
        self.recogniser_gate, self.recogniser_weight = recogniser_gate, float(recogniser_weight or 0.0)
        self.mark_weight = float(mark_weight or 0.0) if mark_comparison else 0.0
        self.mark_face = mc.CanonicalFace.from_state(mark_comparison["face"]) if self.mark_weight else None
        self.mark_scale = float(mark_comparison["scale"]) if self.mark_weight else None
        self.max_pixels = max_pixels
        self.part_crop_size, self.threshold, self.threshold_rule = part_crop_size, threshold, threshold_rule
        self.global_branch, self.source = global_branch, source
        self.device = next(model.parameters()).device

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, adaface_checkpoint: str | None = None,
                        device: str | torch.device = "cpu",
                        landmarker_model: str | os.PathLike = DEFAULT_LANDMARKER_MODEL,
                        max_pixels: int = DEFAULT_MAX_PIXELS, trust_checkpoint: bool = False) -> "TwinVerifier":
        """`adaface_checkpoint` says where the global model file is (its sha256 must match training's);
        without it the file is looked for in `$TWIN_ADAFACE_CHECKPOINT`, `pretrained/` and the recorded path."""
        model, info = load_twin_checkpoint(path, adaface_checkpoint, device, trust_checkpoint)
        detector = FaceLandmarkDetector(landmarker_model)
        return cls(model, detector, info["part_crop_size"], info.get("threshold"),
                   info.get("global_branch", model.global_branch_label), str(path), info.get("threshold_rule"),
                   max_pixels, info.get("recogniser_gate"), info.get("recogniser_weight") or 0.0,
                   info.get("mark_comparison"), info.get("mark_weight") or 0.0)

    def prepare(self, image: ImageSource, name: str | None = None) -> FaceInputs:
        """Parts and aligned face of the largest face in a photo file or an RGB uint8 `H×W×3` array."""
        if isinstance(image, np.ndarray):
            name = name or "<array>"
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"{name}: expected an RGB uint8 H×W×3 array, got {image.dtype} {image.shape}")
            rgb = image
        else:
            rgb, name = read_image(image, self.max_pixels), str(image)
        landmarks = self.detector.detect_largest(rgb, name)
        try:
            return face_inputs(rgb, landmarks, self.part_crop_size, self.model.config.regions)
        except ValueError as error:  # degenerate landmark geometry
            raise NoFaceError(f"{name}: no usable face ({error})") from None

    @torch.inference_mode()
    def embed_faces_and_global(self, faces: Sequence[FaceInputs]) -> tuple[np.ndarray, np.ndarray]:
        """Twin-model embeddings and the global model's own features (both float32, unit length,
        one row per face) of prepared faces, in one batch."""
        face_tensor = adaface_input_tensor(np.stack([f.aligned_bgr for f in faces])).to(self.device)
        parts = {part: part_encoder_input(torch.from_numpy(np.stack([f.parts_rgb[part] for f in faces]))
                                          .to(self.device).movedim(-1, -3))
                 for part in self.model.config.regions}
        output = self.model(face_tensor, parts)
        embeddings, features = (x.float().cpu().numpy() for x in (output.embedding, output.global_embedding))
        if not (np.isfinite(embeddings).all() and np.isfinite(features).all()):
            raise NonFiniteEmbeddingError(f"{self.source}: the model gives NaN or infinite embeddings; its weights "
                                          "or inputs are broken, so no decision can be made")
        return embeddings, features

    def embed_faces(self, faces: Sequence[FaceInputs]) -> np.ndarray:
        """Embeddings (float32 `N×D`, unit length) of prepared faces, in one batch."""
        return self.embed_faces_and_global(faces)[0]

    def _embed(self, images: Iterable[ImageSource], batch_size: int,
               failures: list[tuple[int, str]] | None) -> tuple[np.ndarray, list[int]]:
        """Embed in batches; a bad photo raises, or is appended to `failures` when that is a list."""
        rows, batch, ok = [], [], []
        for index, image in enumerate(images):
            try:
                batch.append(self.prepare(image, f"image {index}"))
                ok.append(index)
            except IMAGE_ERRORS as error:
                if failures is None:
                    raise
                failures.append((index, str(error)))
            if len(batch) == batch_size:
                rows.append(self.embed_faces(batch))
                batch = []
        if batch:
            rows.append(self.embed_faces(batch))
        empty = np.zeros((0, self.model.decision_dim), np.float32)
        return (np.concatenate(rows) if rows else empty), ok

    def embed(self, image: ImageSource) -> np.ndarray:
        """The unit-length float32 embedding (1-D) of the largest face in a photo."""
        return self.embed_faces([self.prepare(image)])[0]

    def embed_many(self, images: Iterable[ImageSource], batch_size: int = 32) -> np.ndarray:
        """Embeddings `N×D` of all photos, in batches. Raises on the first bad photo, naming it
        (`ImageDecodeError`, `NoFaceError`); `embed_each` collects failures instead."""
        return self._embed(images, batch_size, None)[0]

    def embed_each(self, images: Iterable[ImageSource], batch_size: int = 32) -> EmbeddingResults:
        """Like `embed_many`, but a photo that cannot be read or has no face is skipped and reported."""
        failures: list[tuple[int, str]] = []
        embeddings, ok = self._embed(images, batch_size, failures)
        return EmbeddingResults(embeddings, ok, failures)

    def similarity(self, a: ImageSource, b: ImageSource) -> float:
        """The decision score of two photos (before the recogniser's gate): the cosine similarity of
        their embeddings, mixed with the recogniser's at the checkpoint's `recogniser_weight`, then
        with the mark similarity at its `mark_weight`."""
        return self.decision_score(*self.pair_similarities(a, b))

    def pair_similarities(self, a: ImageSource, b: ImageSource) -> tuple[float, float, float | None]:
        """Similarities of two photos: the twin model's embeddings' and the recogniser's features'
        cosines, and the mark similarity (None where the decision does not use marks)."""
        faces = [self.prepare(a, "image 0"), self.prepare(b, "image 1")]
        embeddings, features = self.embed_faces_and_global(faces)
        marks = None
        if self.mark_face is not None:
            details = [self.mark_face.detail(f.skin_face_bgr, mc.landmarks_in_skin_face(
                f.landmarks_px, f.skin_face_bgr.shape[0])) for f in faces]
            marks = float(mc.mark_similarities(mc.mark_difference(self.mark_face, *details), self.mark_scale))
        return float(np.dot(*embeddings)), float(np.dot(*features)), marks

    def decision_score(self, twin_similarity: float, recogniser_similarity: float,
                       mark_similarity: float | None = None) -> float:
        fused = vp.fused_scores(twin_similarity, recogniser_similarity, self.recogniser_weight)
        if mark_similarity is not None:
            fused = vp.mixed_with_marks(fused, mark_similarity, self.mark_weight)
        return float(fused)

    def verify(self, a: ImageSource, b: ImageSource, threshold: float | None = None) -> Verification:
        """Same person or not, at `threshold` (default: the checkpoint's)."""
        rule = self.threshold_rule if threshold is None else "given by the caller"
        threshold = self.threshold if threshold is None else threshold
        if threshold is None:
            raise NoThresholdError(f"{self.source}: the checkpoint holds no decision threshold (its validation "
                                   "had no impostor pairs); give one (threshold=…, --threshold)")
        twin_similarity, recogniser, marks = self.pair_similarities(a, b)
        similarity = self.decision_score(twin_similarity, recogniser, marks)
        if not math.isfinite(similarity):
            raise NonFiniteEmbeddingError(f"{self.source}: the similarity is {similarity}; no decision can be made")
        passes_gate = self.recogniser_gate is None or recogniser >= self.recogniser_gate
        return Verification(similarity, float(threshold), passes_gate and similarity >= threshold, self.global_branch,
                            rule, recogniser, self.recogniser_gate, self.recogniser_weight, twin_similarity,
                            self.mark_weight, marks)

    def close(self) -> None:
        self.detector.close()

    def __enter__(self) -> "TwinVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- command line -------------------------------------------------------------------------------

def image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, in a stable order (hidden files skipped)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


class NothingEmbeddedError(ExpectedError, ValueError):
    """`--embed` found no usable photo, so it writes nothing."""

    exit_code = EXIT_SOME_FAILED


def embed_folder(verifier: TwinVerifier, folder: Path, output: Path, batch_size: int) -> list[str]:
    """Write `output` (npz: `paths` relative to `folder`, `embeddings` float32 N×D); returns failures."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    files = image_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    results = verifier.embed_each(files, batch_size)
    if not results.ok:
        for _, message in results.failures:
            print(f"failed: {message}", file=sys.stderr)
        raise NothingEmbeddedError(f"{folder}: none of {len(files)} photos could be embedded; {output} was not "
                                   "written" + (" (the existing file is unchanged)" if output.exists() else ""))
    buffer = io.BytesIO()
    np.savez(buffer, paths=np.array([files[i].relative_to(folder).as_posix() for i in results.ok]),
             embeddings=results.embeddings)
    write_bytes_atomic(output, buffer.getvalue())
    print(f"{len(results.ok)} of {len(files)} photos embedded → {output}")
    return [message for _, message in results.failures]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", type=Path, help="two photos to compare")
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pth from training")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--embed", type=Path, metavar="DIR", help="embed every photo under DIR")
    parser.add_argument("-o", "--output", type=Path, help="npz file written by --embed")
    parser.add_argument("--threshold", type=float, help="decision threshold (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--adaface-checkpoint", help="where the global model file (AdaFace .ckpt or .onnx) is, if "
                        "not where training saw it; its sha256 must match")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full unpickling of an AdaFace file that weights-only loading refuses "
                             "(only for a file from a source you trust: it can run code)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--landmarker-model", type=Path, default=DEFAULT_LANDMARKER_MODEL)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse photos with more pixels than this (default: %(default)s)")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.embed is None and len(args.images) != 2:
        parser.error("give two photos to compare, or --embed DIR -o OUT.npz")
    if args.embed is not None and (args.images or args.output is None):
        parser.error("--embed DIR takes no photos and needs -o OUT.npz")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.max_pixels < 1:
        parser.error("--max-pixels must be at least 1")
    if args.threshold is not None and not math.isfinite(args.threshold):
        parser.error("--threshold must be a finite number")
    device = resolve_device(args.device, 0)
    with TwinVerifier.from_checkpoint(args.checkpoint, args.adaface_checkpoint, device, args.landmarker_model,
                                      args.max_pixels, args.trust_checkpoint) as verifier:
        if args.embed is not None:
            failures = embed_folder(verifier, args.embed, args.output, args.batch_size)
            for message in failures:
                print(f"failed: {message}", file=sys.stderr)
            return EXIT_SOME_FAILED if failures else EXIT_OK
        result = verifier.verify(*args.images, threshold=args.threshold)
    if args.json:
        first, second = (str(p) for p in args.images)
        print(json.dumps({"image_a": first, "image_b": second, **asdict(result), "decision": result.decision}))
    else:
        print(f"similarity:    {result.similarity:.4f}"
              + (f"\ntwin model:    {result.twin_similarity:.4f} (the recogniser's similarity has a share of "
                 f"{result.recogniser_weight:.2f} in the one above)" if result.recogniser_weight else "")
              + (f"\nmarks:         {result.mark_similarity:.4f} (the mark comparison's similarity has a share "
                 f"of {result.mark_weight:.2f} in the one above)" if result.mark_similarity is not None else "")
              + f"\nthreshold:     {result.threshold:.4f} "
              f"({result.threshold_rule or 'rule not recorded'})")
        if result.recogniser_gate is not None:
            print(f"recogniser:    {result.recogniser_similarity:.4f} (gate {result.recogniser_gate:.4f}: below it, "
                  "different people)")
        print(f"decision:      {result.decision}\nglobal branch: {result.global_branch}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
