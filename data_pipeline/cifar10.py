"""CIFAR-10 python batches: finding them (data_dir, Keras' cache, download) and loading them
with a restricted unpickler that builds only the arrays and lists the batches hold.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from typing import BinaryIO

import numpy as np
from absl import logging

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
ARCHIVE = "cifar-10-python.tar.gz"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
VAL_BATCH = "test_batch"  # CIFAR-10's test set serves as the `val` split.
META = "batches.meta"
# Keras 3 extracts its download into datasets/<this>/cifar-10-batches-py; Keras 2 used datasets/.
KERAS_FNAME = "cifar-10-batches-py-target"
CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (32, 32, 3)


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _latin1_encode(text, encoding="latin1"):
    """`_codecs.encode` as Python 3 uses it to pickle bytes with protocol 2, and nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("Refused `_codecs.encode` with unexpected arguments.")
    return text.encode("latin1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes, dicts, lists, numbers and strings; refuses any other global.

    The CIFAR-10 batches are dicts of a uint8 array, label lists and byte strings; a pickle that
    names any other callable (`os.system`, `builtins.eval`, ...) raises `UnpicklingError`
    before anything is called.
    """

    def __init__(self, file: BinaryIO):
        super().__init__(file, encoding="bytes")
        reconstruct = _numpy_reconstruct()
        self._allowed = {
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): _latin1_encode,
        }

    def find_class(self, module: str, name: str):
        allowed = self._allowed.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"Refused to load `{module}.{name}`: a CIFAR-10 batch holds only numpy "
                f"arrays, lists and strings.")
        return allowed


def _unpickle(file: BinaryIO, where: str) -> dict:
    try:
        batch = RestrictedUnpickler(file).load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{where} is not a safe CIFAR-10 batch: {e}") from None
    except Exception as e:  # truncated or garbled file
        raise ValueError(f"{where} is not a readable CIFAR-10 batch "
                         f"({type(e).__name__}: {e}). Replace it with a fresh copy.") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{where} is not a CIFAR-10 batch (a {type(batch).__name__}, "
                         f"not a dict).")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _to_arrays(batch: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get("labels")
    n = getattr(data, "shape", (0,))[0]
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != int(np.prod(IMAGE_SHAPE)) or not isinstance(labels, list)
            or len(labels) != n):
        raise ValueError(f"{where} is not a CIFAR-10 batch (expected `data`: uint8 [N, 3072] "
                         f"and `labels`: a list of N ints).")
    labels = np.asarray(labels)
    if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0
                        or labels.max() >= len(CLASS_NAMES)):
        raise ValueError(f"{where} has labels outside 0..9.")
    # Stored channel-major: [N, 3, 32, 32] -> [N, 32, 32, 3].
    images = np.ascontiguousarray(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels.astype(np.int32)


def _class_names(meta: dict | None) -> list[str]:
    names = (meta or {}).get("label_names")
    if isinstance(names, list) and len(names) == len(CLASS_NAMES):
        return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    return list(CLASS_NAMES)


class _Folder:
    def __init__(self, path: str):
        self.path = path

    def has(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.path, name))

    def load_many(self, names) -> dict[str, dict]:
        out = {}
        for name in names:
            path = os.path.join(self.path, name)
            with open(path, "rb") as f:
                out[name] = _unpickle(f, path)
        return out


class _Archive:
    def __init__(self, path: str):
        self.path = path
        try:
            with tarfile.open(path, "r:*") as tar:
                # Members are read in place, never extracted, so their paths do not matter.
                self._names = {os.path.basename(m.name): m.name for m in tar.getmembers()
                               if m.isfile()}
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ValueError(f"{path} is not a readable CIFAR-10 archive ({e}). "
                             f"Download it again from {URL}.") from None

    def has(self, name: str) -> bool:
        return name in self._names

    def load_many(self, names) -> dict[str, dict]:
        wanted = {self._names[n]: n for n in names}
        out = {}
        # One sequential pass: a .tar.gz has no random access.
        with tarfile.open(self.path, "r:*") as tar:
            for member in tar:
                if member.isfile() and member.name in wanted:
                    data = tar.extractfile(member).read()
                    out[wanted[member.name]] = _unpickle(io.BytesIO(data),
                                                         f"{self.path}:{member.name}")
        return out


def _complete(location) -> bool:
    return all(location.has(n) for n in TRAIN_BATCHES + (VAL_BATCH,))


def _candidates(folder: str) -> list:
    found = []
    for path in (folder, os.path.join(folder, FOLDER), os.path.join(folder, KERAS_FNAME, FOLDER)):
        if os.path.isdir(path):
            found.append(_Folder(path))
    for path in (os.path.join(folder, ARCHIVE), os.path.join(folder, f"{KERAS_FNAME}_archive")):
        if os.path.isfile(path):
            found.append(_Archive(path))
    return found


def keras_home() -> str:
    """The folder of Keras' caches: $KERAS_HOME or ~/.keras, as Keras itself resolves it."""
    return os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))


def _keras_dataset_dirs() -> list[str]:
    home = keras_home()
    dirs = [os.path.join(home, "datasets")]
    if not os.access(home, os.W_OK):  # where Keras then downloads to
        dirs.append(os.path.join("/tmp", ".keras", "datasets"))
    return dirs


def _download() -> str:
    """Downloads and unpacks the archive into Keras' cache with Keras' own downloader."""
    import keras

    path = keras.utils.get_file(fname=KERAS_FNAME, origin=URL, extract=True, file_hash=SHA256,
                                cache_dir=keras_home())
    return os.path.join(path, FOLDER)


def _locate(data_dir: str | None):
    if data_dir is not None:
        if not os.path.exists(data_dir):
            raise FileNotFoundError(
                f"The CIFAR-10 data_dir does not exist. Point --data_dir at a folder holding "
                f"{FOLDER}/ or {ARCHIVE}, or leave it unset to use Keras' cache. "
                f"Received: data_dir={data_dir!r}")
        if os.path.isfile(data_dir):
            location = _Archive(data_dir)
            if _complete(location):
                return location
            raise ValueError(f"{data_dir} lacks some of the CIFAR-10 batches "
                             f"{TRAIN_BATCHES + (VAL_BATCH,)}. Received: data_dir={data_dir!r}")
        for location in _candidates(data_dir):
            if _complete(location):
                return location
        logging.warning("No CIFAR-10 batches in %s; looking in Keras' cache.", data_dir)
    for folder in _keras_dataset_dirs():
        for location in _candidates(folder):
            if _complete(location):
                return location
    try:
        return _Folder(_download())
    except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        searched = ([data_dir] if data_dir else []) + _keras_dataset_dirs()
        raise FileNotFoundError(
            f"CIFAR-10 is not in {', '.join(searched)} and could not be downloaded "
            f"({reason}). Download {URL} (163 MB) and put it, or the {FOLDER}/ folder it "
            f"unpacks to, in --data_dir. Without network, --dataset=synthetic works, and so "
            f"do --dataset=folder and --dataset=tfrecord with local files.") from None


def load_cifar10(data_dir: str | None = None) -> tuple[
        tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]:
    """Loads CIFAR-10 from `data_dir`, Keras' cache or a download, without executing pickled code.

    Args:
        data_dir: a folder holding `cifar-10-batches-py/` or `cifar-10-python.tar.gz`
            (or the batches themselves), or the archive's path. None: Keras' cache,
            else a download into it through `keras.utils.get_file`.

    Returns:
        ((train_images, train_labels), (val_images, val_labels), class_names): uint8
        [N, 32, 32, 3] images and int32 [N] labels; `val` is CIFAR-10's test_batch.

    Raises:
        FileNotFoundError: when data_dir does not exist, or nothing is cached and the
            download fails.
        ValueError: when a batch is malformed or its pickle names anything but arrays.
    """
    location = _locate(data_dir)
    names = TRAIN_BATCHES + (VAL_BATCH,) + ((META,) if location.has(META) else ())
    batches = location.load_many(names)
    train = [_to_arrays(batches[n], f"{location.path}/{n}") for n in TRAIN_BATCHES]
    val = _to_arrays(batches[VAL_BATCH], f"{location.path}/{VAL_BATCH}")
    meta = batches.get(META)
    train_images = np.concatenate([t[0] for t in train])
    train_labels = np.concatenate([t[1] for t in train])
    logging.info("CIFAR-10 from %s: %d train, %d val images.", location.path,
                 len(train_labels), len(val[1]))
    return (train_images, train_labels), val, _class_names(meta)
