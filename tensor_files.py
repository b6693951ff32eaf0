"""Write a float32 array as a `.pt` file that `torch.load` reads as a tensor, without torch.

Extraction writes one `adaface_input.pt` per photo. Importing torch costs each extraction
worker about 1.3 s of CPU and a few hundred MB, only to call `torch.save`; this module
writes the same file format with the standard library.

The format is torch's zip serialisation (what `torch.save` has written since 1.6):

    archive/data.pkl   a protocol-2 pickle of
                       torch._utils._rebuild_tensor_v2(storage, 0, shape, stride, False, OrderedDict())
                       where `storage` is the persistent id ('storage', torch.FloatStorage, '0', 'cpu', numel)
    archive/data/0     the storage's bytes, little-endian float32
    archive/byteorder  "little"
    archive/version    "3\\n"

Only the globals that `torch.load(weights_only=True)` allows are named, so the files load
in torch's safe mode. The test suite checks the pickle against `torch.save`'s own.
"""

from __future__ import annotations

import io
import struct
import zipfile
from typing import BinaryIO

import numpy as np

ARCHIVE = "archive"

# Protocol-2 pickle opcodes (see the standard library's `pickletools`).
_PROTO_2 = b"\x80\x02"
_MARK, _TUPLE, _EMPTY_TUPLE, _REDUCE, _BINPERSID, _NEWFALSE, _STOP = b"(", b"t", b")", b"R", b"Q", b"\x89", b"."
_SMALL_TUPLES = {1: b"\x85", 2: b"\x86", 3: b"\x87"}


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n"


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def _int(value: int) -> bytes:
    """The shortest opcode the standard pickler uses for a non-negative int."""
    if 0 <= value <= 0xFF:
        return b"K" + struct.pack("<B", value)
    if 0 <= value <= 0xFFFF:
        return b"M" + struct.pack("<H", value)
    if 0 <= value < 2 ** 31:
        return b"J" + struct.pack("<i", value)
    raise ValueError(f"{value} does not fit a 32-bit tensor size")


def _int_tuple(values: tuple[int, ...]) -> bytes:
    items = b"".join(_int(v) for v in values)
    if not values:
        return _EMPTY_TUPLE
    if len(values) in _SMALL_TUPLES:
        return items + _SMALL_TUPLES[len(values)]
    return _MARK + items + _TUPLE


def float_tensor_pickle(shape: tuple[int, ...]) -> bytes:
    """`data.pkl` of a contiguous float32 CPU tensor of `shape` stored as storage '0'."""
    stride = tuple(int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape)))
    numel = int(np.prod(shape, dtype=np.int64))
    storage = _MARK + _string("storage") + _global("torch", "FloatStorage") + _string("0") + _string("cpu") \
        + _int(numel) + _TUPLE + _BINPERSID
    arguments = _MARK + storage + _int(0) + _int_tuple(shape) + _int_tuple(stride) + _NEWFALSE \
        + _global("collections", "OrderedDict") + _EMPTY_TUPLE + _REDUCE + _TUPLE
    return _PROTO_2 + _global("torch._utils", "_rebuild_tensor_v2") + arguments + _REDUCE + _STOP


def write_float_tensor(file: BinaryIO, array: np.ndarray) -> None:
    """Write a `.pt` file holding `array` as a contiguous float32 tensor to the open binary `file`.

    The array's bytes go to the file as they are, without intermediate copies.
    """
    array = np.asarray(array, dtype="<f4", order="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{ARCHIVE}/data.pkl", float_tensor_pickle(tuple(int(n) for n in array.shape)))
        archive.writestr(f"{ARCHIVE}/byteorder", "little")
        archive.writestr(f"{ARCHIVE}/data/0", memoryview(array).cast("B"))
        archive.writestr(f"{ARCHIVE}/version", "3\n")


def float_tensor_file_bytes(array: np.ndarray) -> bytes:
    """The bytes of a `.pt` file holding `array` as a contiguous float32 tensor."""
    buffer = io.BytesIO()
    write_float_tensor(buffer, array)
    return buffer.getvalue()
