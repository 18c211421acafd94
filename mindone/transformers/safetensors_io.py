"""Reading and writing safetensors files as numpy arrays, including bfloat16 (which numpy lacks)."""

import json
import os
import struct

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file


class CheckpointError(OSError):
    """A checkpoint file is missing, unreadable or does not fit the model."""


def _bf16_to_fp32(raw: np.ndarray) -> np.ndarray:
    bits = raw.astype(np.uint32)
    bits <<= 16  # in place: no second float32-sized temporary
    return bits.view(np.float32)


def _fp32_to_bf16_bits(array: np.ndarray) -> np.ndarray:
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF  # round half to even
    return ((bits + rounding) >> 16).astype(np.uint16)


def _header(path: str) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length)), 8 + length


def iter_safetensors(path: str, slice_of=None):
    """Yields (name, numpy array) one tensor at a time; bfloat16 tensors come back as float32. `slice_of(name)` may
    return (dim, start, stop): then only that slice of the tensor is read from the file (tensor parallel ranks).

    Each array is read from the file into memory of its own (not through a memory map: pages of a mapped file that
    were read stay in the process's resident set until the file is closed, which made loading hold a second copy of
    the whole checkpoint). safe_open still validates the file and lists its tensors."""
    try:
        with safe_open(path, framework="np") as f:
            names = list(f.keys())
            header, data_start = _header(path)
            with open(path, "rb") as raw:
                for name in names:
                    dtype, part = header[name]["dtype"], slice_of(name) if slice_of is not None else None
                    if dtype == "BF16":
                        yield name, _bf16_to_fp32(_read(raw, name, header[name], data_start, np.uint16, part))
                    elif dtype in _NUMPY_DTYPE:
                        yield name, _read(raw, name, header[name], data_start, _NUMPY_DTYPE[dtype], part)
                    elif part is not None:
                        raise ValueError(f"tensor '{name}' has dtype {dtype}, which cannot be read in slices")
                    else:
                        yield name, f.get_tensor(name)
    except (SafetensorError, ValueError, struct.error, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"'{path}' is not a readable safetensors file ({err}); re-download or re-save the checkpoint"
        ) from None


def _read(raw, name: str, entry: dict, data_start: int, dtype, part=None) -> np.ndarray:
    """One tensor's bytes into a new array (safetensors is little-endian, as are the hosts MindSpore runs on); with
    `part` (dim, start, stop) only that slice."""
    if part is not None:
        return _read_slice(raw, name, entry, data_start, np.dtype(dtype), part)
    begin, end = entry["data_offsets"]
    array = np.empty(entry["shape"], dtype=dtype)
    raw.seek(data_start + begin)
    if array.nbytes != end - begin or raw.readinto(memoryview(array.reshape(-1)).cast("B")) != end - begin:
        raise ValueError(f"tensor '{name}' does not match its data offsets")
    return array


def _read_slice(raw, name: str, entry: dict, data_start: int, dtype: np.dtype, part: tuple) -> np.ndarray:
    """Rows [start, stop) of a tensor (dim 0: one read), or columns [start, stop) of a 2-D one (one read per row)."""
    dim, start, stop = part
    shape = list(entry["shape"])
    if dim >= len(shape) or dim > 1 or (dim == 1 and len(shape) != 2) or not 0 <= start < stop <= shape[dim]:
        raise ValueError(f"tensor '{name}' of shape {tuple(shape)} has no slice [{start}:{stop}] on axis {dim}")
    begin = data_start + entry["data_offsets"][0]
    if dim == 0:
        array = np.empty([stop - start] + shape[1:], dtype=dtype)
        raw.seek(begin + start * array[:1].nbytes)
        if raw.readinto(memoryview(array.reshape(-1)).cast("B")) != array.nbytes:
            raise ValueError(f"tensor '{name}' does not match its data offsets")
        return array
    rows, cols = shape
    array = np.empty((rows, stop - start), dtype=dtype)
    for row in range(rows):
        raw.seek(begin + (row * cols + start) * dtype.itemsize)
        if raw.readinto(memoryview(array[row]).cast("B")) != array[row].nbytes:
            raise ValueError(f"tensor '{name}' does not match its data offsets")
    return array


def write_safetensors(path: str, tensors: dict, bf16_names=frozenset()) -> None:
    """Writes atomically (temporary file, then rename). Names in `bf16_names` are stored as BF16."""
    tmp = f"{path}.tmp"
    if not bf16_names:
        save_file(tensors, tmp, metadata={"format": "pt"})
    else:
        _write_with_bf16(tmp, tensors, bf16_names)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def _write_with_bf16(path: str, tensors: dict, bf16_names) -> None:
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, array in tensors.items():
        if name in bf16_names:
            data, dtype = _fp32_to_bf16_bits(array).tobytes(), "BF16"
        else:
            data, dtype = np.ascontiguousarray(array).tobytes(), _SAFETENSORS_DTYPE[array.dtype.str[1:]]
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for blob in blobs:
            f.write(blob)


_NUMPY_DTYPE = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}  # fmt: skip
_SAFETENSORS_DTYPE = {"f4": "F32", "f2": "F16", "f8": "F64", "i4": "I32", "i8": "I64", "u1": "U8", "i1": "I8", "b1": "BOOL"}
