"""`.pt` files written without torch load in torch as the same tensors `torch.save` writes."""

import io
import pickletools
import zipfile

import numpy as np
import pytest
import torch

from tensor_files import float_tensor_file_bytes, float_tensor_pickle, write_float_tensor


def torch_saved_pickle(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as archive:
        return archive.read("archive/data.pkl")


@pytest.mark.parametrize("shape", [(3, 112, 112), (7,), (2, 3, 4, 5), (300, 70000), ()])
def test_the_pickle_is_torch_saves_own(shape):
    """Opcode for opcode the same as torch.save's, once the unused memo entries are dropped."""
    ours = float_tensor_pickle(shape)
    theirs = torch_saved_pickle(torch.zeros(shape, dtype=torch.float32))
    assert pickletools.optimize(ours) == pickletools.optimize(theirs)


def write_through_handle(path, array):
    with open(path, "wb") as handle:
        write_float_tensor(handle, array)


@pytest.mark.parametrize("write", [lambda path, array: path.write_bytes(float_tensor_file_bytes(array)),
                                   write_through_handle], ids=["bytes", "handle"])
@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("shape", [(3, 112, 112), (5,), (2, 3, 4, 5), ()])
def test_files_load_in_safe_mode_as_the_same_tensor(tmp_path, shape, mmap, write):
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    path = tmp_path / "t.pt"
    write(path, array)
    tensor = torch.load(path, weights_only=True, mmap=mmap)
    assert tensor.dtype == torch.float32 and tensor.shape == shape and tensor.is_contiguous()
    assert torch.equal(tensor, torch.from_numpy(array))


def test_other_dtypes_and_layouts_are_stored_as_contiguous_float32():
    array = np.arange(24, dtype=np.float64).reshape(2, 3, 4).transpose(2, 0, 1)  # not contiguous
    tensor = torch.load(io.BytesIO(float_tensor_file_bytes(array)), weights_only=True)
    assert tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert torch.equal(tensor, torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)))


def test_sizes_beyond_32_bits_are_refused():
    with pytest.raises(ValueError, match="32-bit"):
        float_tensor_pickle((2 ** 31,))


def test_writing_to_a_file_gives_the_same_bytes(tmp_path):
    array = np.random.default_rng(1).normal(size=(3, 112, 112)).astype(np.float32)
    write_through_handle(tmp_path / "t.pt", array)
    assert (tmp_path / "t.pt").read_bytes() == float_tensor_file_bytes(array)
