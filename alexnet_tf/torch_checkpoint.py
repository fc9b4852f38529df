"""Reading PyTorch state-dict files (`torch.save(model.state_dict())`) into NumPy arrays.

Needs no PyTorch and runs nothing from the file: its pickle may name only what a state dict holds.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile

import numpy as np

__all__ = ["read_state_dict"]

# The first pickles of the legacy format (torch.save before 1.6, or with
# _use_new_zipfile_serialization=False).
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# PyTorch's typed storage classes -> the dtype of their elements (torch names).
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
# torch dtypes that can appear as pickled `torch.<name>` (with _rebuild_tensor_v3) -> NumPy.
_NUMPY_DTYPES = {
    "float64": "<f8", "float32": "<f4", "float16": "<f2", "int64": "<i8", "int32": "<i4",
    "int16": "<i2", "int8": "i1", "uint8": "u1", "bool": "?", "complex64": "<c8",
    "complex128": "<c16", "uint16": "<u2", "uint32": "<u4", "uint64": "<u8",
}
# torch dtypes NumPy has only through ml_dtypes (installed with TensorFlow).
_ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
# Copies of an expanded (stride-0) tensor larger than this are refused rather than made.
_MAX_EXPANDED_BYTES = 1 << 30
# Leading bytes of files often mistaken for checkpoints -> what they are.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras .h5 weights?)"),
    (b"\x1f\x8b", "a gzip file (unpack it first)"),
)


class _CheckpointError(ValueError):
    """A problem with the file, worded to follow its path."""


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads the tensors of a PyTorch state-dict file, without PyTorch.

    Both of torch.save's formats are read: the zip archive (PyTorch 1.6 and later)
    and the legacy pickle stream (before 1.6, or `_use_new_zipfile_serialization=False`),
    which torchvision's published AlexNet weights use. The file's pickle may name only
    what a state dict holds (OrderedDict, tensors, parameters and their storages); any
    other Python object is refused before anything is called, so reading an untrusted
    file runs none of its code.

    The top-level object must be a dict of str -> tensor. A checkpoint that wraps one,
    such as {"state_dict": {...}, "epoch": 3}, is unwrapped when exactly one of its
    values is a non-empty dict of str -> tensor; the other entries are not read.

    Args:
        path: The .pth/.pt file.

    Returns:
        The tensors by name, in the file's order, each a C-contiguous array that owns
        its memory (tensors sharing a storage are copied apart), in the stored dtype:
        float32/float64/float16, bfloat16 and float8 (ml_dtypes), int8-int64,
        uint8-uint64, bool, complex64/complex128. Byte order is native.

    Raises:
        FileNotFoundError: `path` does not exist.
        IsADirectoryError: `path` is a folder.
        ValueError: The file is not a PyTorch checkpoint, is truncated or damaged, or
            holds something other than a state dict (e.g. a whole pickled model); the
            message names the file and what was found.
    """
    with open(path, "rb") as f:
        try:
            head = f.read(512)
            f.seek(0)
            if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
                return _read_zip(f)
            if head[:1] == b"\x80":
                return _read_legacy(f)
            raise _CheckpointError(_not_torch(head))
        except _CheckpointError as exc:
            raise ValueError(f"{path} {exc}") from None
        except Exception as exc:  # noqa: BLE001 - whatever a damaged file trips inside pickle/zipfile
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise ValueError(f"{path} could not be read as a PyTorch checkpoint, "
                             f"it is truncated or damaged ({detail})") from None


def _not_torch(head: bytes) -> str:
    """Why a file that starts with `head` is no checkpoint, in words."""
    if not head:
        return "is empty, not a PyTorch checkpoint"
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            return f"is {what}, not a PyTorch checkpoint"
    if head[257:262] == b"ustar":
        return ("is a tar archive: PyTorch's tar checkpoint format (before 0.4) is not read; "
                "re-save the state dict with a newer PyTorch")
    if len(head) > 8 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < (1 << 30):
        return "looks like a safetensors file, not a PyTorch (.pth) checkpoint"
    return f"is not a PyTorch checkpoint (it starts with bytes {head[:8].hex(' ')})"


# --- What the pickle may build ----------------------------------------------------------


class _Inert:
    """Base of the stand-ins the pickle builds: no state can be set on them from the file."""

    __slots__ = ()

    def __setstate__(self, state):
        raise _CheckpointError(f"sets state on a {type(self).__name__[1:]}, which a state dict never does")


class _DType(_Inert):
    """A torch dtype, or the element type of a storage class."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def numpy(self) -> np.dtype:
        if self.name in _ML_DTYPES:
            try:
                import ml_dtypes
            except ImportError:
                raise _CheckpointError(f"holds {self.name} tensors, which need the ml_dtypes "
                                       "package (pip install ml_dtypes)") from None
            return np.dtype(getattr(ml_dtypes, self.name))
        return np.dtype(_NUMPY_DTYPES[self.name])


class _StorageClass(_Inert):
    """`torch.FloatStorage` and its kin; `torch.UntypedStorage` holds bytes."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: _DType):
        self.dtype = dtype


class _TensorClass(_Inert):
    """`torch.Tensor` or `torch.nn.Parameter`, as the type handed to `_rebuild_from_type_v2`."""

    __slots__ = ()


class _Storage(_Inert):
    """A storage the pickle refers to by key; its bytes are read only if a chosen tensor needs them."""

    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: _DType, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.numpy().itemsize


class _Tensor(_Inert):
    """A tensor as `_rebuild_tensor_v2` describes it: a strided view into a storage."""

    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage, offset, size, stride, dtype: _DType | None = None):
        if not isinstance(storage, _Storage):
            raise _CheckpointError("builds a tensor on something that is not a storage")
        if not (_is_index(offset) and isinstance(size, tuple) and isinstance(stride, tuple)
                and len(size) == len(stride) and all(map(_is_index, size + stride))):
            raise _CheckpointError(f"holds a tensor with an invalid layout "
                                   f"(offset {offset!r}, size {size!r}, stride {stride!r})")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.dtype = dtype or storage.dtype


def _is_index(value) -> bool:
    return type(value) is int and value >= 0


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, _DType):
        raise _CheckpointError("builds a tensor whose dtype is not a torch dtype")
    return _Tensor(storage, storage_offset, size, stride, dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    if not isinstance(data, _Tensor):
        raise _CheckpointError("builds an nn.Parameter around something that is not a tensor")
    return data


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in _REBUILDERS or not isinstance(new_type, _TensorClass) or not isinstance(args, tuple):
        raise _CheckpointError("holds a tensor subclass, which a state dict does not")
    return func(*args)


def _admitted(module: str, name: str):
    """What GLOBAL `module.name` stands for while reading, or None where it is refused."""
    if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
    if module == "torch._utils":
        return {"_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor_v2,
                "_rebuild_tensor_v3": _rebuild_tensor_v3, "_rebuild_parameter": _rebuild_parameter,
                "_rebuild_parameter_with_state": _rebuild_parameter}.get(name)
    if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
        return _rebuild_from_type_v2
    if (module, name) in (("torch", "Tensor"), ("torch.nn.parameter", "Parameter")):
        return _TensorClass()
    if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
        return _StorageClass(_DType(_STORAGE_DTYPES[name]))
    if module in ("torch", "torch.storage") and name == "UntypedStorage":
        return _StorageClass(_DType("uint8"))
    if module == "torch" and (name in _NUMPY_DTYPES or name in _ML_DTYPES):
        return _DType(name)
    return None


class _StateDictUnpickler(pickle.Unpickler):
    """An unpickler that builds only a state dict's objects and collects its storages."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file, encoding="utf-8")
        self.storages = storages

    def find_class(self, module: str, name: str):
        found = _admitted(module, name)
        if found is None:
            raise _CheckpointError(_refusal(f"{module}.{name}"))
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and _ascii(pid[0]) == "storage"):
            raise _CheckpointError(f"refers to an external object {_short(pid)}, not a tensor storage")
        storage_class, key, _location, numel = pid[1:5]
        if len(pid) == 6 and pid[5] is not None:
            raise _CheckpointError("holds a storage view of PyTorch before 1.0, which is not "
                                   "read; re-save the state dict with a newer PyTorch")
        key = _ascii(key)
        if not (isinstance(storage_class, _StorageClass) and isinstance(key, str) and _is_index(numel)):
            raise _CheckpointError(f"refers to a storage with an invalid description {_short(pid)}")
        known = self.storages.get(key)
        if known is None:
            known = self.storages[key] = _Storage(key, storage_class.dtype, numel)
        elif known.dtype.name != storage_class.dtype.name or known.numel != numel:
            raise _CheckpointError(f"describes storage {key} in two different ways")
        return known


def _refusal(what: str) -> str:
    """The message for a pickle that asks for `what` ("module.name")."""
    if what.rpartition(".")[2][:1].isupper():
        return (f"holds a pickled {what} object, not a state dict of tensors (nothing was run); "
                "if it is a whole model, load it with PyTorch and save model.state_dict() instead")
    return (f"asks for {what}, which a state dict never holds, so it was not loaded "
            "(nothing was run); save only model.state_dict() with torch.save")


def _ascii(value):
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --- The two formats ----------------------------------------------------------------------


def _read_zip(f) -> dict[str, np.ndarray]:
    """The state dict of a zip-format checkpoint open in `f`."""
    try:
        archive = zipfile.ZipFile(f)
    except zipfile.BadZipFile:
        raise _CheckpointError("is a damaged or truncated zip archive (its central directory "
                               "is missing); download or copy it again") from None
    names = archive.namelist()
    pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise _CheckpointError("is a zip archive but not a PyTorch checkpoint "
                               f"(it has {len(pickles)} '<name>/data.pkl' records, not 1)")
    prefix = pickles[0][: -len("data.pkl")]
    if prefix + "constants.pkl" in names:
        raise _CheckpointError("is a TorchScript archive (torch.jit.save), not a state dict; "
                               "load it with torch.jit.load and save its state_dict() instead")
    byteorder = "little"
    if prefix + "byteorder" in names:
        byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise _CheckpointError(f"records an unknown byte order {byteorder!r}")
    storages: dict[str, _Storage] = {}
    root = _StateDictUnpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
    chosen = _choose_tensors(root)
    plan = _plan(chosen)
    file_size = os.fstat(f.fileno()).st_size
    filled = {}
    for key, (storage, make, _) in plan.items():
        name = f"{prefix}data/{key}"
        try:
            info = archive.getinfo(name)
        except KeyError:
            raise _CheckpointError(f"lacks storage {key} ({name}) that its pickle refers "
                                   "to; the file is truncated or damaged") from None
        nbytes = storage.nbytes
        if info.file_size < nbytes:
            raise _CheckpointError(f"is truncated: storage {key} has {info.file_size} bytes, "
                                   f"its pickle declares {nbytes}")
        if info.compress_type == zipfile.ZIP_STORED:
            # As torch writes it: the bytes go straight from the file into the array.
            f.seek(info.header_offset)
            header = f.read(30)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raise _CheckpointError(f"is damaged: the zip record of storage {key} is not "
                                       "where its directory says")
            start = info.header_offset + 30 + sum(struct.unpack("<HH", header[26:30]))
            if start + nbytes > file_size:
                raise _CheckpointError(f"is truncated: storage {key} ends past the end of the file")
            f.seek(start)
            filled[key] = _fill(key, make(), f)
        else:
            with archive.open(info) as member:
                filled[key] = _fill(key, make(), member)
    return _arrays(chosen, plan, filled, swap=byteorder != ("little" if np.little_endian else "big"))


def _fill(key: str, array: np.ndarray, source) -> np.ndarray:
    """`array` with its bytes read from the binary file `source`."""
    target = memoryview(array.reshape(-1).view(np.uint8))
    got = 0
    while got < target.nbytes:
        n = source.readinto(target[got:])
        if not n:
            raise _CheckpointError(f"is truncated: storage {key} has only {got} of "
                                   f"{target.nbytes} bytes")
        got += n
    return array


def _read_legacy(f) -> dict[str, np.ndarray]:
    """The state dict of a legacy-format checkpoint open in `f`."""
    storages: dict[str, _Storage] = {}

    def next_pickle():
        return _StateDictUnpickler(f, storages).load()

    try:
        magic = next_pickle()
    except _CheckpointError:
        raise
    except Exception:  # noqa: BLE001 - whatever a non-pickle trips
        raise _CheckpointError("is not a PyTorch checkpoint, or is truncated: it starts like a "
                               "pickle, but its first record cannot be read") from None
    if magic != _LEGACY_MAGIC:
        raise _CheckpointError("is a pickle file but not a PyTorch checkpoint (no torch.save magic "
                               "number); save tensors with torch.save(model.state_dict(), path)")
    protocol = next_pickle()
    if protocol != _LEGACY_PROTOCOL:
        raise _CheckpointError(f"has torch.save protocol version {protocol!r}; only "
                               f"{_LEGACY_PROTOCOL} is read")
    if not isinstance(next_pickle(), dict):
        raise _CheckpointError("is damaged: its system-information record is not a dict")
    root = next_pickle()
    keys = next_pickle()
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise _CheckpointError("is damaged: its list of storage keys is not a list of strings")
    chosen = _choose_tensors(root)
    plan = _plan(chosen)
    file_size = os.fstat(f.fileno()).st_size
    filled = {}
    # Each storage, in the order of `keys`: its element count (int64, little-endian), its bytes.
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise _CheckpointError(f"is damaged: it lists storage {key}, which no tensor uses")
        count = f.read(8)
        if len(count) < 8:
            raise _CheckpointError(f"is truncated: storage {key} is missing")
        (numel,) = struct.unpack("<q", count)
        if numel != storage.numel:
            raise _CheckpointError(f"is damaged: storage {key} records {numel} elements, "
                                   f"its pickle declares {storage.numel}")
        nbytes = storage.nbytes
        if f.tell() + nbytes > file_size:
            raise _CheckpointError(f"is truncated: storage {key} needs {nbytes} bytes, "
                                   f"{file_size - f.tell()} are left")
        if key in plan:
            filled[key] = _fill(key, plan[key][1](), f)
        else:
            f.seek(nbytes, os.SEEK_CUR)
    missing = [key for key in plan if key not in filled]
    if missing:
        raise _CheckpointError(f"lacks the data of storage {missing[0]} that its pickle refers "
                               "to; the file is truncated or damaged")
    # Storages in this format are little-endian on every machine.
    return _arrays(chosen, plan, filled, swap=not np.little_endian)


# --- From the unpickled object to arrays ---------------------------------------------------


def _tensor_dict(value) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, _Tensor) for k, v in value.items()))


def _choose_tensors(root) -> list[tuple[str, _Tensor]]:
    """The (name, tensor) pairs of the state dict in the unpickled `root`."""
    if not isinstance(root, dict):
        raise _CheckpointError(f"holds a {type(root).__name__}, not a state dict (a dict of tensors)")
    if not root or _tensor_dict(root):
        return list(root.items())
    inner = [k for k, v in root.items() if _tensor_dict(v)]
    if len(inner) == 1:
        return list(root[inner[0]].items())
    if inner:
        raise _CheckpointError(f"holds several dicts of tensors ({', '.join(map(repr, inner))}) and "
                               "no single state dict; save the one you need on its own")
    odd = next(k for k, v in root.items() if not (isinstance(k, str) and isinstance(v, _Tensor)))
    value = root[odd]
    what = "a tensor" if isinstance(value, _Tensor) else f"a {type(value).__name__}"
    raise _CheckpointError(f"is not a state dict: entry {odd!r} is {what}, and no entry is "
                           "a dict of tensors to use instead")


def _plan(chosen) -> dict:
    """For each storage the chosen tensors use, in order of first use: (storage, allocate, owner).

    A storage that exactly one tensor uses, wholly and in C order, is read straight into
    that tensor's array (`owner` is the tensor's name); any other is read into a byte
    buffer that its tensors are copied from (`owner` is None).
    """
    users = collections.Counter(tensor.storage.key for _, tensor in chosen)
    plan = {}
    for name, tensor in chosen:
        storage = tensor.storage
        if storage.key in plan:
            continue
        dtype = tensor.dtype.numpy()
        if users[storage.key] == 1 and _covers(tensor, dtype):
            plan[storage.key] = (storage, lambda size=tensor.size, dtype=dtype: np.empty(size, dtype), name)
        else:
            plan[storage.key] = (storage, lambda n=storage.nbytes: np.empty(n, np.uint8), None)
    return plan


def _covers(tensor: _Tensor, dtype: np.dtype) -> bool:
    """Whether `tensor` is its whole storage, in C order."""
    return (tensor.offset == 0 and math.prod(tensor.size) * dtype.itemsize == tensor.storage.nbytes
            and _c_contiguous(tensor.size, tensor.stride))


def _c_contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    return all(s == math.prod(size[i + 1:]) for i, (n, s) in enumerate(zip(size, stride)) if n > 1)


def _arrays(chosen, plan, filled, swap: bool) -> dict[str, np.ndarray]:
    """The arrays of the `chosen` tensors, from the storages `filled` as `plan` said."""
    out = {}
    for name, tensor in chosen:
        key = tensor.storage.key
        array = filled[key] if plan[key][2] == name else _strided(name, tensor, filled[key])
        if swap and array.dtype.itemsize > 1:
            unit = array.dtype.itemsize // (2 if array.dtype.kind == "c" else 1)
            array.reshape(-1).view(f"u{unit}").byteswap(inplace=True)
        out[name] = array
    return out


def _strided(name: str, tensor: _Tensor, raw: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of tensor `name` from its storage's bytes `raw`."""
    dtype = tensor.dtype.numpy()
    if raw.nbytes % dtype.itemsize:
        raise _CheckpointError(f"is damaged: the storage of tensor {name!r} is not a whole number "
                               f"of {tensor.dtype.name} elements")
    elements = raw.view(dtype)
    size, stride, offset = tensor.size, tensor.stride, tensor.offset
    count = math.prod(size)
    if count == 0:
        return np.zeros(size, dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= elements.size:
        raise _CheckpointError(f"is damaged: tensor {name!r} reaches past the end of its storage "
                               f"(element {last} of {elements.size})")
    if _c_contiguous(size, stride):
        return elements[offset: offset + count].reshape(size).copy()
    if count > elements.size and count * dtype.itemsize > _MAX_EXPANDED_BYTES:
        raise _CheckpointError(f"holds an expanded tensor {name!r} of {count} elements over a storage "
                               f"of {elements.size}; save it with .contiguous() or .clone()")
    strides = tuple(s * dtype.itemsize for s in stride)
    view = np.lib.stride_tricks.as_strided(elements[offset:], shape=size, strides=strides,
                                           writeable=False)
    return view.copy(order="C")
