"""The training configuration: one typed, frozen dataclass.

Precedence: defaults < `--config run.json` < command-line flags. Every field is a flag
(`num_epochs` → `--num-epochs`); unknown keys in a JSON file are errors. The resolved
config is written into the run folder and into every checkpoint as a plain dict.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cli_errors import EXIT_USAGE, ExpectedError
from combined_model import DECISION_EMBEDDINGS
from cutout import REGION_NAMES, REGION_SETS, parse_regions
from distributed import DEVICE_PATTERN
from face_parts_model import PART_BACKBONES, PART_HEADS, PART_INPUTS
from global_branch import default_global_model
from mining import LOSSES
from net import ADAFACE_ARCHS

NEGATIVE_STRATEGIES = ("random", "twin", "mixed", "curriculum")
SAMPLERS = ("families", "triplets")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Files and folders of a run: made absolute when the run starts, so that its checkpoints
# work from any folder (evaluate.py reads the dataset through them).
DATA_PATH_KEYS = ("face_parts_dataset_path", "tensor_dataset_path", "twin_pairs_path", "output_dir")
# Keys added after runs were already being made, whose default changed what a run does: a
# saved config without them was made with these values.
LEGACY_DEFAULTS = {"sampler": "triplets", "loss": "triplet", "part_head": "pool", "global_distillation": 0.0,
                   "global_skip": False, "part_loss_weight": 0.0, "part_input": "rgb",
                   "recogniser_gate": 0.0, "decision_embedding": "combined", "recogniser_weight": "0",
                   "mark_weight": "0"}
# Keys that change how a run is executed, not what it computes: they may differ on resume.
# (target_twin_far only moves the stored decision threshold, never the weights; where the part
# crops are augmented follows the device, which may change, and both places draw from the same ranges.)
RUN_CONTROL_KEYS = frozenset({"num_workers", "stop_after_epochs", "progress", "log_every_steps", "device",
                              "target_twin_far", "trust_checkpoint", "activation_checkpointing", "compile",
                              "augment_on_device"})


class ConfigError(ExpectedError, ValueError):
    """A config value or file that cannot be used; the message names the key."""

    exit_code = EXIT_USAGE


def _key(help_text: str, **kwargs) -> Any:
    return field(metadata={"help": help_text, **kwargs.pop("metadata", {})}, **kwargs)


@dataclass(frozen=True)
class TrainConfig:
    # --- the original configuration keys ---
    num_epochs: int = _key("epochs to train", default=100)
    batch_size: int = _key("triplets per step on each process (--sampler triplets)", default=8)
    learning_rate: float = _key("peak learning rate (AdamW; warm-up, then cosine decay)", default=1e-4)
    triplet_margin: float = _key("triplet-loss margin on Euclidean distances between unit-length "
                                 "embeddings (range 0..2)", default=1.0)
    train_split: float = _key("share of twin families (a twin pair, or a person without a twin) "
                              "used for training", default=0.8)
    face_parts_embedding_dim: int = _key("embedding size of each part encoder", default=128)
    adaface_arch: str = _key("AdaFace backbone", default="ir_50", metadata={"choices": ADAFACE_ARCHS})
    freeze_adaface: bool = _key("keep AdaFace frozen (the only supported mode: its embeddings are "
                                "computed once and cached)", default=True)
    tensor_dataset_path: str = _key("tensor_dataset.json from the extractor",
                                    default="extracted_face_parts/tensor_dataset.json")
    face_parts_dataset_path: str = _key("face_parts_dataset.json from the extractor",
                                        default="extracted_face_parts/face_parts_dataset.json")
    twin_pairs_path: str = _key("JSON list of [twin_a, twin_b] identity pairs", default="twin_pairs.json")
    output_dir: str = _key("run folder: checkpoints/, logs/, split.json", default="twin_verification_training")
    # --- model ---
    adaface_checkpoint: str = _key("global model: an AdaFace .ckpt, an ArcFace-aligned .onnx recogniser "
                                   "(e.g. pretrained/w600k_mbf.onnx), 'default' ($TWIN_ADAFACE_CHECKPOINT, else "
                                   "pretrained/adaface_ir50_ms1mv2.ckpt beside the code) or 'none' for an "
                                   "untrained global branch (demos only)", default="default")
    global_input_colour: str = _key("channel order an .onnx recogniser takes (AdaFace: always bgr); auto = "
                                    "rgb for .onnx, as InsightFace's models", default="auto",
                                    metadata={"choices": ("auto", "rgb", "bgr")})
    global_input_mean: float = _key("an .onnx recogniser's input is (x - mean)/std on 0..255 pixels",
                                    default=127.5)
    global_input_std: float = _key("see global_input_mean", default=127.5)
    part_backbone: str = _key("part encoder network", default="resnet50", metadata={"choices": PART_BACKBONES})
    part_weights: str = _key("part encoder initialisation: imagenet (torchvision's weights, downloaded "
                             "once into the torch cache), none, or a weight file", default="imagenet")
    part_head: str = _key("part encoder head: spatial (1×1 conv to a few channels, flattened map, linear: "
                          "keeps where a mark is) or pool (global average pool, linear)", default="spatial",
                          metadata={"choices": PART_HEADS})
    part_input: str = _key("what the part trunks see of each crop: highpass (each pixel less its "
                           "neighbourhood's mean: local detail such as moles and scars, without the light's "
                           "level, colour and gradient) or rgb (the crop as it is)", default="highpass",
                           metadata={"choices": PART_INPUTS})
    global_skip: bool = _key("add a linear path from the global embedding straight to the output embedding "
                             "(the projection adds what the parts tell to the recogniser's geometry)", default=True)
    decision_embedding: str = _key("what verification compares: both (the part embeddings and the projection's "
                                   "output, each unit-length, concatenated: their cosine similarities averaged), "
                                   "parts (the part encoders' embeddings alone, each region unit-length, "
                                   "concatenated; the projection then only helps train the encoders) or combined "
                                   "(the projection of global and part embeddings alone); the recogniser gate "
                                   "turns strangers away in front of any of them", default="both",
                                   metadata={"choices": DECISION_EMBEDDINGS})
    hidden_dim: int = _key("hidden width of the projection", default=512)
    regions: str = _key("face regions, one part encoder each: a set (" + ", ".join(REGION_SETS) + ") or "
                        "comma-separated names from " + ", ".join(REGION_NAMES) + "; the extraction must "
                        "hold them (face_parts_extractor.py --regions)", default="five")
    embedding_dim: int = _key("final embedding size", default=256)
    # --- data ---
    test_split: float = _key("share of families held out for evaluate.py (the rest after train and "
                             "test is validation)", default=0.1)
    seed: int = _key("seed of the split, initialisation, triplets and augmentation", default=0)
    sampler: str = _key("families: each batch holds whole families (both twins) with K images per identity, "
                        "each image encoded once; triplets: pre-drawn (anchor, positive, negative)",
                        default="families", metadata={"choices": SAMPLERS})
    families_per_batch: int = _key("families (twin pairs or twinless people) per batch and process "
                                   "(--sampler families)", default=4)
    images_per_identity: int = _key("images of each identity in a family batch (--sampler families)", default=4)
    global_distillation: float = _key("weight of a loss that keeps, for pairs from different families, the "
                                      "cosine similarity of the frozen global recogniser (general impostors stay "
                                      "as well told apart as the recogniser tells them; --sampler families; "
                                      "pointless with an untrained global branch); 0 = none", default=1.0)
    part_loss_weight: float = _key("weight of the same mining loss on the part embeddings alone (the "
                                   "regions' unit-length embeddings, concatenated): the part encoders must tell "
                                   "the batch's identities apart by themselves, not only through the projection "
                                   "(--sampler families); 0 = none", default=1.0)
    virtual_twins: float = _key("share of a family batch's families that get a virtual twin: a sibling made of "
                                "K images of one member with the same synthetic local marks painted on, so the "
                                "model learns that a persistent local detail is identity (--sampler families; "
                                "virtual_twins.py); 0 = none", default=0.0)
    loss: str = _key("triplet: hinge on pre-drawn triplets (--sampler triplets); batch_hard: each anchor's "
                     "hardest positive and negative in the batch (hinge with --triplet-margin); batch_hard_soft: the same "
                     "with the soft margin log(1+exp(d(a,p)−d(a,n))); batch_all: mean over the batch's triplets "
                     "with a non-zero hinge (all three --sampler families)", default="batch_all",
                     metadata={"choices": LOSSES})
    negative_strategy: str = _key("negatives: random person, the anchor's twin, a mix, or a curriculum "
                                  "(random, then twin)", default="mixed",
                                  metadata={"choices": NEGATIVE_STRATEGIES})
    twin_negative_fraction: float = _key("share of twin negatives for the mixed strategy (--sampler triplets)",
                                         default=0.5)
    curriculum_switch_epoch: int = _key("first epoch (0-based) of the curriculum's twin stage", default=10)
    augment: bool = _key("augment part crops and the aligned face in training", default=True)
    augment_strength: float = _key("scale of the part augmentation ranges (rotation 8°, zoom and contrast "
                                   "±8%/±20%, shift 4%, … at 1.0)", default=1.0)
    augment_on_device: str = _key("where part crops are augmented: on = the training device warps each batch "
                                  "(device_augment.py; the loader only draws each crop's parameters), off = the "
                                  "loader processes, on the CPU; auto = on for CUDA. Both draw from the same "
                                  "ranges; the pixels differ", default="auto",
                                  metadata={"choices": ("auto", "on", "off")})
    face_augment_views: int = _key("augmented views of each aligned face whose (frozen) global "
                                   "embeddings are cached beside the plain one; 0 = none", default=2)
    # --- optimisation ---
    weight_decay: float = _key("AdamW weight decay", default=1e-4)
    warmup_epochs: float = _key("linear learning-rate warm-up, in epochs", default=1.0)
    grad_clip_norm: float = _key("clip the gradient norm to this; 0 = off", default=5.0)
    precision: str = _key("auto = bf16 autocast on CUDA, fp32 on CPU", default="auto",
                          metadata={"choices": PRECISIONS})
    channels_last: str = _key("auto = on for CUDA", default="auto", metadata={"choices": ("auto", "on", "off")})
    activation_checkpointing: bool = _key("recompute the part trunks' activations in the backward pass instead "
                                          "of keeping them: same results, far less memory, about a third "
                                          "more compute (for larger batches on one GPU)", default=False)
    compile: bool = _key("compile the training steps' forward with torch.compile: faster steps on a GPU, after "
                         "slow first ones (minutes at full size; again for each new batch shape). Checkpoints are "
                         "the same", default=False)
    early_stopping_patience: int = _key("stop after this many epochs without a better validation twin "
                                        "EER; 0 = never", default=15)
    target_twin_far: float = _key("the decision threshold stored in best.pth accepts at most this share of "
                                  "the validation twin impostors", default=1e-2)
    recogniser_gate: float = _key("a gate on the frozen global recogniser's similarity: at the highest one it "
                                  "gives a validation pair of unrelated people, but turning away at most this "
                                  "share of the validation genuine pairs. A pair below it is two different "
                                  "people whatever the twin model says, so the twin model decides only between "
                                  "look-alikes (twins). Validation, best.pth, evaluate.py and inference.py all "
                                  "use it; 0 = no gate", default=0.01)
    recogniser_weight: str = _key("how much the frozen global recogniser's own similarity counts in the decision "
                                  "score: (1 − w) · twin model + w · recogniser. auto = chosen on each validation: "
                                  "1 unless the twin model alone beats the recogniser alone by more than 2 points "
                                  "of twin EER and is no worse than it in 95% of resamples of the validation "
                                  "families, then the smallest of 0, 0.05, …, 1 within 2 points of the best; "
                                  "or a number 0..1. Validation, best.pth, evaluate.py and inference.py all use "
                                  "it", default="auto")
    mark_weight: str = _key("how much the skin-detail comparison (mark_comparison.py: small local marks that "
                            "one photo shows and the other lacks, compared on a common face; nothing learnt) "
                            "counts in the decision: (1 − m) · decision + m · mark similarity. auto = chosen on "
                            "each validation: 0 unless some weight lowers the twin EER by more than 2 points, "
                            "then the smallest of 0, 0.05, …, 1 within 2 points of the best; or a number 0..1; "
                            "0 = off (needed for extractions without skin_face images)",
                            default="auto")
    max_general_impostor_pairs: int = _key("validation general-impostor pairs (a seeded sample when "
                                           "there are more)", default=200_000)
    # --- run control (may change between resumes) ---
    num_workers: int = _key("data-loading processes per training process", default=4)
    device: str = _key("auto, cpu, cuda or cuda:N", default="auto")
    log_every_steps: int = _key("TensorBoard batch scalars every N steps", default=10)
    stop_after_epochs: int = _key("finish this invocation after N more epochs (the run resumes later); "
                                  "0 = run to the end", default=0)
    progress: bool = _key("show progress bars", default=True)
    trust_checkpoint: bool = _key("allow full unpickling of an AdaFace file that weights-only loading "
                                  "refuses (only for a file from a source you trust: it can run code)",
                                  default=False)

    def __post_init__(self) -> None:
        def check(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r}: {why}")

        check(self.num_epochs >= 1, "num_epochs", "must be at least 1")
        check(self.batch_size >= 1, "batch_size", "must be at least 1")
        check(self.learning_rate > 0, "learning_rate", "must be positive")
        check(self.triplet_margin > 0, "triplet_margin", "must be positive")
        check(0 < self.train_split < 1, "train_split", "must be between 0 and 1")
        check(0 <= self.test_split < 1 - self.train_split, "test_split",
              f"must leave some families for validation (train_split is {self.train_split})")
        check(0 <= self.twin_negative_fraction <= 1, "twin_negative_fraction", "must be within 0..1")
        check(0 < self.target_twin_far < 1, "target_twin_far", "must be between 0 and 1")
        check(0 <= self.recogniser_gate < 1, "recogniser_gate", "must be within [0, 1)")
        check(self.recogniser_weight == "auto" or fixed_weight(self.recogniser_weight) is not None,
              "recogniser_weight", "choose auto or a number within 0..1")
        check(self.mark_weight == "auto" or fixed_weight(self.mark_weight) is not None,
              "mark_weight", "choose auto or a number within 0..1")
        check(self.face_augment_views >= 0, "face_augment_views", "must be 0 or more")
        for key in ("face_parts_embedding_dim", "hidden_dim", "embedding_dim", "log_every_steps"):
            check(getattr(self, key) >= 1, key, "must be at least 1")
        for key in ("curriculum_switch_epoch", "early_stopping_patience", "max_general_impostor_pairs",
                    "num_workers", "stop_after_epochs"):
            check(getattr(self, key) >= 0, key, "must be 0 or more")
        for key in ("weight_decay", "warmup_epochs", "grad_clip_norm", "augment_strength"):
            check(math.isfinite(getattr(self, key)) and getattr(self, key) >= 0, key, "must be a number ≥ 0")
        for key in ("learning_rate", "triplet_margin"):
            check(math.isfinite(getattr(self, key)), key, "must be a finite number")
        check(DEVICE_PATTERN.fullmatch(self.device) is not None, "device", "choose auto, cpu, cuda or cuda:N")
        check(self.freeze_adaface, "freeze_adaface", "fine-tuning AdaFace is not supported: the global "
              "branch is frozen by design and its embeddings are cached")
        check(self.global_input_std > 0, "global_input_std", "must be positive")
        onnx = self.adaface_checkpoint.lower().endswith(".onnx")
        check(onnx or (self.global_input_colour in ("auto", "bgr") and self.global_input_mean == 127.5
                       and self.global_input_std == 127.5), "global_input_colour",
              "the input convention flags apply only to an .onnx recogniser (AdaFace's input is BGR, mean and "
              "std 127.5)")
        check(self.families_per_batch >= 1, "families_per_batch", "must be at least 1")
        check(math.isfinite(self.global_distillation) and self.global_distillation >= 0, "global_distillation",
              "must be a number ≥ 0")
        check(math.isfinite(self.part_loss_weight) and self.part_loss_weight >= 0, "part_loss_weight",
              "must be a number ≥ 0")
        check(0 <= self.virtual_twins <= 1, "virtual_twins", "must be within 0..1")
        check(self.images_per_identity >= 2, "images_per_identity", "must be at least 2 (an anchor needs a positive)")
        check((self.sampler == "triplets") == (self.loss == "triplet"), "loss",
              f"--loss triplet goes with --sampler triplets, the mining losses with --sampler families "
              f"(sampler is {self.sampler!r})")
        try:
            parse_regions(self.regions)
        except ValueError as error:
            raise ConfigError(f"regions={self.regions!r}: {error}") from None
        for key in ("adaface_arch", "part_backbone", "part_head", "part_input", "decision_embedding", "sampler", "loss",
                    "negative_strategy", "augment_on_device", "precision", "channels_last", "global_input_colour"):
            choices = self.field_metadata(key)["choices"]
            check(getattr(self, key) in choices, key, f"choose one of {', '.join(choices)}")

    @classmethod
    def field_metadata(cls, key: str) -> dict:
        return next(f.metadata for f in fields(cls) if f.name == key)

    @property
    def region_names(self) -> tuple[str, ...]:
        return parse_regions(self.regions)

    @property
    def adaface_checkpoint_path(self) -> str | None:
        """The global file as an absolute path, resolved now (None: untrained global branch)."""
        if self.adaface_checkpoint.lower() == "none":
            return None
        if self.adaface_checkpoint == "default":
            return str(default_global_model())
        return str(Path(self.adaface_checkpoint).expanduser().resolve())

    @property
    def global_input_colour_or_none(self) -> str | None:
        return None if self.global_input_colour == "auto" else self.global_input_colour

    def with_absolute_data_paths(self) -> "TrainConfig":
        """This config with the dataset files and the output folder as absolute paths
        (relative ones resolve against the current folder)."""
        return replace(self, **{key: str(Path(getattr(self, key)).resolve()) for key in DATA_PATH_KEYS})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown keys {unknown}; known keys: {sorted(known)}")
        checked = {}
        for key, value in values.items():
            expected = known[key].type
            if expected == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            type_name = type(value).__name__
            if type_name != expected:
                raise ConfigError(f"{source}: {key} must be {expected}, got {value!r}")
            checked[key] = value
        return cls(**checked)


def fixed_weight(text: str) -> float | None:
    """`recogniser_weight` or `mark_weight` as a number within 0..1; None for `auto` or anything else."""
    try:
        weight = float(text)
    except ValueError:
        return None
    return weight if 0 <= weight <= 1 else None


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train the twin verification model with twin-aware triplets. Re-running the same "
                    "command resumes from OUTPUT_DIR/checkpoints/latest.pth.")
    parser.add_argument("--config", type=Path, help="JSON file with any of the keys below "
                        "(flags given on the command line win)")
    for item in fields(TrainConfig):
        flag = "--" + item.name.replace("_", "-")
        default = item.default if item.default is not MISSING else None
        # argparse formats help strings with `%`: a literal one must be doubled.
        kwargs = {"help": item.metadata["help"].replace("%", "%%"), "default": None, "dest": item.name}
        if "choices" in item.metadata:
            kwargs["choices"] = item.metadata["choices"]
        if item.type == "bool":
            # `--augment` / `--no-augment`, and `--augment false` for scripts.
            parser.add_argument(flag, nargs="?", const=True, type=_parse_bool, metavar="BOOL",
                                **{**kwargs, "help": kwargs["help"] + f" (default: {default})"})
            parser.add_argument("--no-" + item.name.replace("_", "-"), action="store_false", dest=item.name,
                                default=None, help=argparse.SUPPRESS)
        else:
            parser.add_argument(flag, type={"int": int, "float": float, "str": str}[item.type],
                                **{**kwargs, "help": kwargs["help"] + f" (default: {default})"})
    return parser


def parse_config(argv: list[str] | None = None) -> TrainConfig:
    """Defaults < --config file < flags."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    if args.config is not None:
        try:
            values = json.loads(Path(args.config).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{args.config}: config file not found") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"{args.config}: not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{args.config}: expected a JSON object of config keys")
        TrainConfig.from_dict(values, str(args.config))  # reports unknown keys and wrong types early
    for item in fields(TrainConfig):
        flag_value = getattr(args, item.name)
        if flag_value is not None:
            values[item.name] = flag_value
    return TrainConfig.from_dict(values, "command line")
