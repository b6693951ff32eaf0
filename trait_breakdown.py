"""Twin EER broken down by what tells the twins apart: mark kind and where the marks are.

The simulator's `traits.json` lists each identity's marks with `kind`, `shared` (the twin has
it too) and `group` (`five`: inside one of the five original parts; `added`: only inside the
added regions; `outside`: in no region). A twin family is told apart by its *distinguishing*
marks: those of either twin that the other does not share.

Breakdowns (each a set of families; their genuine and twin-impostor pairs give one EER):
- `kind`: families with at least one distinguishing mark of that kind;
- `region`: families whose distinguishing marks all lie in one group (`five`, `added`,
  `outside`), families with marks in several (`mixed`), and `not_in_five`: families with
  no distinguishing mark inside the five parts (what a five-part model cannot see);
- `photos` (where the simulator's `jpg_dataset.json` lies beside its traits.json):
  `same_photo`, the genuine pairs whose two images are captures of one real photo, and
  `other_photo`, those made from two different real photos of the person, each against
  the twin pairs of the same families. Twins are built from the same photos, so a model
  that tells twins apart by their marks scores both alike; one that mostly recognises the
  photo accepts same-photo genuine pairs and confuses the other ones with twins.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import verification_metrics as vm
import verification_pairs as vp
from face_parts_extractor import image_key

REGION_GROUPS = ("five", "added", "outside")


class TraitFileError(ValueError):
    """A traits.json that is missing or not the simulator's format."""


def load_traits(path: Path) -> dict[str, dict[str, Any]]:
    """`{identity: record}` from the simulator's traits.json; errors name the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TraitFileError(f"{path}: traits file not found") from None
    except json.JSONDecodeError as error:
        raise TraitFileError(f"{path}: not valid JSON ({error})") from None
    identities = data.get("identities") if isinstance(data, dict) else None
    if not isinstance(identities, dict):
        raise TraitFileError(f"{path}: expected make_twin_demo.py's traits.json with an 'identities' object")
    for identity, record in identities.items():
        marks = record.get("traits") if isinstance(record, dict) else None
        if not isinstance(marks, list) or not all(isinstance(m, dict) and {"kind", "group", "shared"} <= set(m)
                                                  for m in marks):
            raise TraitFileError(f"{path}: identity {identity!r} lacks marks with kind, group and shared "
                                 "(made before traits recorded their regions? re-run make_twin_demo.py)")
    return identities


def twin_family_of_pairs(persons: list[str], twin_of: dict[str, str]) -> np.ndarray:
    """The twin family of each pair's person on one side (`a+b`, the twins' sorted names;
    "" for a person without a twin)."""
    family_of = {p: "+".join(sorted((p, t))) for p, t in twin_of.items()}
    return np.array([family_of.get(p, "") for p in persons])


def subset_twin_eer(scores: np.ndarray, genuine: np.ndarray, twins: np.ndarray) -> dict[str, Any]:
    """Pair counts and twin EER of the genuine pairs `genuine` against the twin pairs `twins`
    (boolean masks over the pairs); the EER is None unless both are there."""
    entry = {"genuine_pairs": int(genuine.sum()), "twin_pairs": int(twins.sum()), "eer": None}
    if genuine.any() and twins.any():
        chosen = genuine | twins
        entry["eer"] = float(vm.equal_error_rate(scores[chosen], genuine[chosen].astype(int))[0])
    return entry


def load_sources(traits_path: Path) -> dict[tuple[str, str], str] | None:
    """`{(identity, image key): source photo}` from the `sources` of traits.json and the
    image order of the `jpg_dataset.json` beside it; None where that file is absent."""
    dataset_path = Path(traits_path).parent / "jpg_dataset.json"
    if not dataset_path.is_file():
        return None
    try:
        dataset = json.loads(dataset_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise TraitFileError(f"{dataset_path}: not valid JSON ({error})") from None
    identities = load_traits(traits_path)
    sources = {}
    for identity, entries in dataset.items():
        photos = identities.get(identity, {}).get("sources")
        if not isinstance(photos, list) or len(photos) != len(entries):
            raise TraitFileError(f"{traits_path}: identity {identity!r} lists {len(photos or [])} source photos "
                                 f"for its {len(entries)} images in {dataset_path}")
        sources.update({(identity, image_key(entry)): photo for entry, photo in zip(entries, photos)})
    return sources


def twin_eer_by_photo(scores: np.ndarray, kind: np.ndarray, keys_a: list[tuple[str, str]],
                      keys_b: list[tuple[str, str]], twin_of: dict[str, str],
                      sources: dict[tuple[str, str], str]) -> dict[str, Any]:
    """Twin EER of the genuine pairs from one real photo and of those from two, each against
    the twin pairs of the families that have such genuine pairs. `keys_*`: (person, image key)."""
    first = twin_family_of_pairs([person for person, _ in keys_a], twin_of)
    second = twin_family_of_pairs([person for person, _ in keys_b], twin_of)
    photo_a, photo_b = [np.array([sources.get(key, "") for key in keys]) for keys in (keys_a, keys_b)]
    known = (photo_a != "") & (photo_b != "")  # images the traits file does not list count nowhere
    inside = (first == second) & (first != "")
    result: dict[str, Any] = {}
    for name, wanted in (("same_photo", True), ("other_photo", False)):
        genuine = inside & known & (kind == vp.GENUINE) & ((photo_a == photo_b) == wanted)
        families = sorted(set(first[genuine].tolist()))
        twins = inside & (kind == vp.TWIN) & np.isin(first, families)
        result[name] = {"families": len(families), **subset_twin_eer(scores, genuine, twins)}
    return result


def distinguishing_marks(traits: dict[str, dict[str, Any]], identity: str, twin: str) -> list[dict[str, Any]]:
    """Marks of either twin that the other does not have."""
    return [m for person in (identity, twin) for m in traits.get(person, {}).get("traits", []) if not m["shared"]]


def family_groups(marks: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The breakdown labels one family belongs to, from its distinguishing marks."""
    kinds = sorted({m["kind"] for m in marks})
    groups = {m["group"] for m in marks}
    region = [next(iter(groups))] if len(groups) == 1 else (["mixed"] if groups else [])
    if marks and "five" not in groups:
        region.append("not_in_five")
    return {"kind": kinds, "region": region}


def twin_eer_by_trait(scores: np.ndarray, kind: np.ndarray, person_a: list[str], person_b: list[str],
                      twin_of: dict[str, str], traits: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Twin EER per breakdown label. `scores`, `kind` (`verification_pairs` kinds) and the
    pair's two persons are per pair; families are named by their sorted twin pair."""
    labels: dict[str, dict[str, list[str]]] = {}
    for person, twin in twin_of.items():
        labels["+".join(sorted((person, twin)))] = family_groups(distinguishing_marks(traits, person, twin))
    first, second = twin_family_of_pairs(person_a, twin_of), twin_family_of_pairs(person_b, twin_of)
    inside = (first == second) & (first != "")
    result: dict[str, Any] = {"kind": {}, "region": {}}
    for axis in result:
        names = sorted({name for family in labels.values() for name in family[axis]})
        for name in names:
            families = [f for f, family in labels.items() if name in family[axis]]
            chosen = inside & np.isin(first, families)
            result[axis][name] = {"families": len(families),
                                  **subset_twin_eer(scores, chosen & (kind == vp.GENUINE), chosen & (kind == vp.TWIN))}
    return result


def table(breakdown: dict[str, dict[str, Any]]) -> str:
    """Plain-text table: one line per (model, axis, label)."""
    lines = [f"{'model':10s} {'by':6s} {'label':16s} {'families':>8s} {'twin pairs':>10s} {'twin EER':>8s}"]
    for model, axes in breakdown.items():
        for axis, entries in axes.items():
            for name, entry in entries.items():
                eer = "n/a" if entry["eer"] is None else f"{100 * entry['eer']:.1f}%"
                lines.append(f"{model:10s} {axis:6s} {name:16s} {entry['families']:8d} {entry['twin_pairs']:10d} "
                             f"{eer:>8s}")
    return "\n".join(lines)
