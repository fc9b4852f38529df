"""Shared fixtures of the export tests (fake training runs, image files) and tests of export/common.py."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from alexnet_tf import rundir
from alexnet_tf.model import build_alexnet
from export import common

CLASS_NAMES = ["cat", "dog", "bird"]


def make_run(model_dir, *, seed=0, num_classes=3, class_names=CLASS_NAMES, model=None,
             variant="cifar", weights=("best",), **extra_info):
    """A training run's folder without training: run.json and (random) weights."""
    os.makedirs(model_dir, exist_ok=True)
    if model is None:
        model = build_alexnet(variant, num_classes, seed=seed)
    info = {"variant": variant, "num_classes": num_classes, "class_names": class_names,
            "model_kwargs": {}}
    info.update(extra_info)
    rundir.write_run_info(str(model_dir), info)
    for which in weights:
        rundir.save_weights_atomic(model, os.path.join(model_dir, rundir.WEIGHTS[which]))
    return str(model_dir), model


def random_images(n, height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), dtype=np.uint8)


def separable_images(n, num_classes, seed, shift=20.0, size=32):
    """Noisy images whose class shows as a colour shift and a class-specific stripe pattern."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    x = rng.normal(110, 50, (n, size, size, 3))
    yy, xx = np.mgrid[0:size, 0:size]
    for c in range(num_classes):
        mask = labels == c
        x[mask, ..., c % 3] += shift
        x[mask] += (((xx + c * yy) // 4 % 2)[None] * shift)[..., None]
    return np.clip(x, 0, 255).astype(np.uint8), labels.astype(np.int32)


def encode(image, fmt, **kwargs):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_header_only(width, height):
    """A tiny, well-formed PNG header declaring width x height RGB pixels (no pixel data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = (struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
             + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    idat = zlib.compress(b"\0" * 64)
    chunk += struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))


def jpeg_declaring(width, height):
    """A small real JPEG whose SOF0 header is patched to declare width x height."""
    data = bytearray(encode(random_images(1, 16, 16)[0], "JPEG"))
    sof = data.index(b"\xff\xc0")
    # SOF0: marker, length (2), precision (1), height (2), width (2).
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_default_export_dir_is_inside_the_run(tmp_path):
    assert common.resolve_export_dir(str(tmp_path), None) == os.path.join(str(tmp_path), "export")
    assert os.path.isdir(os.path.join(tmp_path, "export"))


def test_export_dir_refuses_the_source_package_and_files(tmp_path):
    package = os.path.dirname(os.path.abspath(common.__file__))
    with pytest.raises(ValueError, match="source package"):
        common.resolve_export_dir(str(tmp_path), package)
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        common.resolve_export_dir(str(tmp_path), str(afile))


@pytest.mark.parametrize("name", ["", "../up", "a/b", ".hidden", "with space"])
def test_bad_model_names(name):
    with pytest.raises(ValueError, match="model_name"):
        common.model_name_for({"variant": "cifar"}, name)


def test_model_name_default_and_class_names():
    assert common.model_name_for({"variant": "owt"}, None) == "alexnet_owt"
    assert common.class_names_of({"num_classes": 2}) == ["0", "1"]
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        common.class_names_of({"num_classes": 2, "class_names": ["a", "b", "c"]})


def test_publish_file_never_overwrites(tmp_path):
    path = str(tmp_path / "m.tflite")
    common.publish_file(b"one", path)
    with pytest.raises(FileExistsError, match="already exists"):
        common.publish_file(b"two", path)
    assert open(path, "rb").read() == b"one"
    assert os.listdir(tmp_path) == ["m.tflite"]  # no temporary file left


def test_variant_for_crop():
    assert common.variant_for_crop(32) == "cifar"
    assert common.variant_for_crop(227) == "paper"
    with pytest.raises(ValueError, match="Cannot tell the model variant"):
        common.variant_for_crop(100)
