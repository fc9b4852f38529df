"""Writes NumPy arrays as a PyTorch state-dict checkpoint, without PyTorch.

The pickle's opcodes are emitted directly (pickling the globals would import torch); the
files load with `torch.load(path, weights_only=True)` in either `torch.save` format.
"""

from __future__ import annotations

import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

_STORAGE_CLASSES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage",
    np.dtype(np.bool_): "BoolStorage",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ORDERED_DICT = b"ccollections\nOrderedDict\n"


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int_tuple(values: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_int(v) for v in values) + b"t"


def _c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _state_pickle(arrays: dict[str, np.ndarray], legacy: bool) -> bytes:
    """The pickle of an OrderedDict name -> tensor; tensor i uses storage key str(i)."""
    out = [b"\x80\x02", _ORDERED_DICT, b")R("]
    for i, (name, array) in enumerate(arrays.items()):
        storage_class = _STORAGE_CLASSES[array.dtype.newbyteorder("=")]
        storage = (b"(" + _str("storage") + b"ctorch\n" + storage_class.encode() + b"\n"
                   + _str(str(i)) + _str("cpu") + _int(array.size) + (b"N" if legacy else b"") + b"t")
        out += [_str(name), b"ctorch._utils\n_rebuild_tensor_v2\n", b"(", storage, b"Q", _int(0),
                _int_tuple(array.shape), _int_tuple(_c_strides(array.shape)), b"\x89",
                _ORDERED_DICT, b")R", b"tR"]
    out.append(b"u.")
    return b"".join(out)


def write_state_dict(path: str, arrays: dict[str, np.ndarray], *, legacy: bool = False,
                     byteorder: str = "little") -> None:
    """Writes `arrays` as a PyTorch state dict, one storage per array.

    Args:
        path: the file to write.
        arrays: parameter name -> array (any layout or byte order; written in C order).
        legacy: write the legacy format (`_use_new_zipfile_serialization=False`) instead of
            the zip archive.
        byteorder: "little", or "big" for a zip archive as a big-endian machine writes it
            (its `byteorder` record says so); the legacy format is always little-endian.

    Raises:
        ValueError: an array's dtype has no PyTorch storage type, or `byteorder` is neither
            "little" nor "big" (or "big" with legacy=True).
    """
    if byteorder not in ("little", "big") or (legacy and byteorder == "big"):
        raise ValueError(f"byteorder must be 'little' or 'big' (zip format only), not {byteorder!r}")
    order = "<" if byteorder == "little" else ">"
    stored = {}
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.newbyteorder("=") not in _STORAGE_CLASSES:
            raise ValueError(f"{name}: dtype {a.dtype} has no PyTorch storage type; "
                             f"use one of {', '.join(map(str, _STORAGE_CLASSES))}")
        if a.dtype.itemsize > 1 and a.dtype.kind != "V" and a.dtype.byteorder != "|":
            a = a.astype(a.dtype.newbyteorder(order), copy=False)
        elif order == ">" and a.dtype.itemsize > 1:  # ml_dtypes' bfloat16: swap the raw halves
            a = a.view(np.uint16).byteswap().view(a.dtype)
        stored[name] = a if a.flags.c_contiguous else a.copy(order="C")  # 0-d stays 0-d
    data = _state_pickle(stored, legacy)
    if legacy:
        with open(path, "wb") as f:
            f.write(pickle.dumps(_LEGACY_MAGIC, protocol=2))
            f.write(pickle.dumps(_LEGACY_PROTOCOL, protocol=2))
            f.write(pickle.dumps({"protocol_version": _LEGACY_PROTOCOL, "little_endian": True,
                                  "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
            f.write(data)
            f.write(pickle.dumps([str(i) for i in range(len(stored))], protocol=2))
            for a in stored.values():
                f.write(struct.pack("<q", a.size))
                f.write(_raw(a))
        return
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data)
        zf.writestr("archive/byteorder", byteorder.encode())
        for i, a in enumerate(stored.values()):
            with zf.open(f"archive/data/{i}", "w", force_zip64=a.nbytes > 2**31) as member:
                member.write(_raw(a))
        zf.writestr("archive/version", b"3\n")


def _raw(a: np.ndarray) -> memoryview:
    """The bytes of the C-contiguous array `a`, without a copy."""
    return memoryview(a.reshape(-1).view(np.uint8))
