"""Feature vectors of image files against the model's own layers run in the test; labels by
class folder; the .npz file; unreadable files skipped and named."""

import logging
import os

import keras
import numpy as np
import pytest
from PIL import Image

from alexnet_tf import features
from alexnet_tf.config import FEATURE_LAYERS
from alexnet_tf.model import build_alexnet
from data_pipeline import preprocess
from test_export_common import CLASS_NAMES, encode, make_run, random_images


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Class folders named by the run's classes (one nested), a loose file, a corrupt file."""
    root = tmp_path_factory.mktemp("tree")
    (root / "cat" / "sub").mkdir(parents=True)
    (root / "dog").mkdir()
    pixels = random_images(4, 40, 56, seed=3)
    (root / "cat" / "a.png").write_bytes(encode(pixels[0], "PNG"))
    (root / "cat" / "sub" / "b.png").write_bytes(encode(pixels[1], "PNG"))
    (root / "dog" / "c.bmp").write_bytes(encode(pixels[2, :32, :32], "BMP"))
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (root / "loose.png").write_bytes(encode(pixels[3], "PNG"))
    expected = {str(root / "cat" / "a.png"): 0, str(root / "cat" / "sub" / "b.png"): 0,
                str(root / "dog" / "c.bmp"): 1, str(root / "loose.png"): -1}
    return str(root), expected


@pytest.fixture(scope="module")
def model():
    return build_alexnet("cifar", len(CLASS_NAMES), seed=4)


def reference(model, layer, paths):
    """The layer's output of each file, computed image by image with a model built here."""
    probe = keras.Model(model.input, model.get_layer(layer).output)
    out = []
    for path in paths:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        batch = preprocess.eval_images(pixels[None], "cifar")
        out.append(np.asarray(probe(batch, training=False)).reshape(-1))  # C-order flatten
    return np.stack(out)


@pytest.mark.parametrize("layer", FEATURE_LAYERS)
def test_folder_features_equal_the_layer_of_each_image(model, tree, layer):
    folder, expected = tree
    info = {"variant": "cifar", "class_names": CLASS_NAMES}
    got = features.folder_features(model, info, folder, layer, batch_size=3, verbose=0)
    assert sorted(got.paths) == sorted(expected)
    want = reference(model, layer, got.paths)
    assert got.features.dtype == np.float32 and got.features.shape == want.shape
    np.testing.assert_allclose(got.features, want, rtol=1e-4, atol=1e-4)
    if layer != "pool5":  # after the Dense layer's ReLU
        assert got.features.min() >= 0 and got.features.shape[1] == 1024


def test_labels_follow_the_runs_classes_and_bad_files_are_named(model, tree, caplog):
    folder, expected = tree
    info = {"variant": "cifar", "class_names": CLASS_NAMES}
    with caplog.at_level(logging.WARNING):
        got = features.folder_features(model, info, folder, "fc7", verbose=0)
    assert dict(zip(got.paths, got.labels.tolist())) == expected
    assert got.class_names == CLASS_NAMES
    broken = os.path.join(folder, "dog", "broken.jpg")
    assert [path for path, _ in got.skipped] == [broken]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [line for line in warnings if broken in line] == [f"Skipped {broken}: {got.skipped[0][1]}"]


def test_folders_that_name_no_class_are_numbered_in_sorted_order():
    paths = ["g/zebra/1.png", "g/ant/x/2.png", "g/3.png", "g/ant/4.png"]
    labels, names = features.folder_labels("g", paths, CLASS_NAMES)
    assert labels.tolist() == [1, 0, -1, 0] and names == ["ant", "zebra"]
    labels, names = features.folder_labels("g", ["g/dog/1.png", "g/2.png"], CLASS_NAMES)
    assert labels.tolist() == [1, -1] and names == CLASS_NAMES
    labels, names = features.folder_labels("g", ["g/n02/1.png"], ["cat", "dog"], aliases=["n01", "n02"])
    assert labels.tolist() == [1] and names == ["cat", "dog"]
    labels, names = features.folder_labels("g", ["g/1.png"], CLASS_NAMES)
    assert labels.tolist() == [-1] and names == []


def test_run_features_writes_the_npz(tmp_path, tree):
    folder, expected = tree
    model_dir, model = make_run(tmp_path / "run", seed=6)
    output = str(tmp_path / "out" / "fc6.npz")
    features.run_features(model_dir, folder, output, layer="fc6", batch_size=2, verbose=0)
    with np.load(output) as data:
        assert set(data.files) == {"features", "paths", "labels", "layer", "class_names"}
        paths = data["paths"].tolist()
        assert sorted(paths) == sorted(expected)
        assert data["labels"].dtype == np.int32 and data["labels"].tolist() == [expected[p] for p in paths]
        assert data["features"].dtype == np.float32 and data["features"].shape == (4, 1024)
        assert str(data["layer"]) == "fc6" and data["class_names"].tolist() == CLASS_NAMES
        np.testing.assert_allclose(data["features"], reference(model, "fc6", paths), rtol=1e-4, atol=1e-4)
    loaded = features.load_features(output)
    assert loaded.paths == paths and loaded.layer == "fc6"
    assert not [n for n in os.listdir(tmp_path / "out") if n != "fc6.npz"]  # no temporary file left


def test_extractor_and_argument_errors(model, tmp_path):
    assert features.feature_extractor(model, "pool5").output.shape[1:] == (3 * 3 * 256,)
    with pytest.raises(ValueError, match=r"Received: layer='fc8'"):
        features.feature_extractor(model, "fc8")
    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="fc6")], name="small")
    with pytest.raises(ValueError, match="has no layer named 'fc7'"):
        features.feature_extractor(small, "fc7")
    with pytest.raises(ValueError, match=r"Received: batch_size=0"):
        features.extract_features(model, "cifar", ["x.png"], batch_size=0)
    with pytest.raises(ValueError, match="one label per path"):
        features.extract_features(model, "cifar", ["x.png"], labels=[0, 1])
    empty = features.extract_features(model, "cifar", [], "fc7")
    assert empty.features.shape == (0, 1024) and empty.paths == []
    info = {"variant": "cifar", "class_names": CLASS_NAMES}
    with pytest.raises(FileNotFoundError, match="Received: data_dir="):
        features.folder_features(model, info, str(tmp_path / "none"))
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="holds no image files"):
        features.folder_features(model, info, str(tmp_path))
