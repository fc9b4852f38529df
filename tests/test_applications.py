"""`AlexNet()`, `preprocess_input` and `decode_predictions` on the cifar variant: weights from a
run folder, its .weights.h5 and a .keras file against the run's exported SavedModel, the
headless model against pool5, the input geometry against slicing by hand, and the errors."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import AlexNet, decode_predictions, preprocess_input
from alexnet_tf.applications import min_input_size
from export import keras_file, saved_model
from test_export_common import CLASS_NAMES, make_run, random_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-class cifar run exported as a SavedModel and as a .keras file."""
    root = tmp_path_factory.mktemp("applications")
    model_dir, model = make_run(root / "run", seed=3)
    loaded = tf.saved_model.load(saved_model.export_saved_model(model_dir))
    return {"dir": model_dir, "model": model, "serving": loaded.signatures["serving_default"],
            "keras": keras_file.export_keras(model_dir)}


def sub_model(model, layer):
    return keras.Model(model.input, model.get_layer(layer).output)


@pytest.mark.parametrize("which", ["run folder", "weights.h5", "keras"])
def test_weights_equal_the_runs_serving_default(run, which):
    weights = {"run folder": run["dir"], "weights.h5": os.path.join(run["dir"], "best.weights.h5"),
               "keras": run["keras"]}[which]
    model = AlexNet("cifar", weights=weights, classes=3)
    images = random_images(4, 45, 61, seed=5)
    expected = run["serving"](images=tf.constant(images))["probabilities"].numpy()
    got = model.predict(preprocess_input(images, "cifar"), verbose=0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert [layer.name for layer in model.layers][-3:] == ["fc7", "fc8", "predictions"]


def test_without_classifier_activation_the_output_is_fc8(run):
    model = AlexNet("cifar", weights=run["dir"], classes=3, classifier_activation=None)
    assert model.layers[-1].name == "fc8" and model.name == "alexnet_cifar"
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    logits = np.asarray(run["model"](x))
    np.testing.assert_allclose(np.asarray(model(x)), logits, rtol=0, atol=1e-5)
    probabilities = np.asarray(AlexNet("cifar", weights=run["dir"], classes=3)(x))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities, e / e.sum(axis=1, keepdims=True), atol=1e-6)


def test_without_top_features_equal_pool5(run):
    x = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    pool5 = np.asarray(sub_model(run["model"], "pool5")(x))  # [3, 3, 3, 256]
    headless = AlexNet("cifar", weights=run["dir"], include_top=False)
    assert headless.input.shape == (None, None, None, 3)
    assert headless.layers[-1].name == "pool5" and "fc6" not in [l.name for l in headless.layers]
    np.testing.assert_allclose(np.asarray(headless(x)), pool5, rtol=0, atol=1e-5)
    for pooling, reduce in (("avg", np.mean), ("max", np.max)):
        model = AlexNet("cifar", weights=run["dir"], include_top=False, pooling=pooling)
        assert model.layers[-1].name == f"{pooling}_pool" and model.output.shape == (None, 256)
        np.testing.assert_allclose(np.asarray(model(x)), reduce(pool5, axis=(1, 2)), atol=1e-5)


def test_without_top_other_input_sizes(run):
    model = AlexNet("cifar", weights=run["dir"], include_top=False, input_shape=(64, 48, 3))
    # cifar: 3x3 "same" convs; each 3x3/2 pool maps n to (n - 3) // 2 + 1: 64 -> 31 -> 15 -> 7,
    # 48 -> 23 -> 11 -> 5.
    assert model.output.shape == (None, 7, 5, 256)
    for name in ("conv1", "conv5"):
        for ours, theirs in zip(model.get_layer(name).get_weights(),
                                run["model"].get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)


def test_smallest_input_sizes():
    # owt: conv1 (k11, s4, pad 2) -> pool -> conv2 -> pool -> conv3-5 -> pool5 >= 1 needs
    # pool2 >= 3, pool1 >= 7, conv1 >= 15: (s + 4 - 11) // 4 + 1 >= 15, s >= 63.
    # paper: conv1 unpadded, (s - 11) // 4 + 1 >= 15, s >= 67. cifar: 3x3 "same" convs, s >= 15.
    assert {v: min_input_size(v) for v in ("owt", "paper", "cifar")} == {
        "owt": 63, "paper": 67, "cifar": 15}
    assert AlexNet("cifar", include_top=False, input_shape=(15, 15, 3)).output.shape == (
        None, 1, 1, 256)
    with pytest.raises(ValueError, match=r"at least 15x15.*Received: input_shape=\(14, 20, 3\)"):
        AlexNet("cifar", include_top=False, input_shape=(14, 20, 3))


@pytest.mark.parametrize("kwargs, match", [
    ({"variant": "vgg"}, "Received: variant='vgg'"),
    ({"pooling": "sum", "include_top": False}, "Received: pooling='sum'"),
    ({"pooling": "avg"}, "include_top=False.*Received: pooling='avg', include_top=True"),
    ({"classifier_activation": "relu"}, "Received: classifier_activation='relu'"),
    ({"classes": 1}, "Received: classes=1"),
    ({"groups": 3}, "Received: groups=3"),
    ({"input_shape": (100, 100, 3)}, r"\(224, 224, 3\).*Received: input_shape=\(100, 100, 3\)"),
    ({"input_shape": (64, 64, 1), "include_top": False}, r"Received: input_shape=\(64, 64, 1\)"),
    ({"variant": "cifar", "weights": "imagenet"}, "'owt' variant. Received: variant='cifar'"),
    ({"weights": "imagenet", "classes": 10}, "should be 1000. Received: classes=10"),
    ({"weights": "no/such/alexnet.pth"}, "no such file.*Received: weights='no/such/alexnet.pth'"),
    ({"weights": 3}, "Received: weights=3"),
    ({"weights": os.path.join(ROOT, "README.md")}, "ends in none of.*Received: weights="),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AlexNet(**kwargs)


def test_weights_of_another_model_are_named(run, tmp_path):
    with pytest.raises(ValueError, match=r"variant='cifar', groups=1, classes=3; call "
                       r"AlexNet\(variant='cifar', classes=3, \.\.\.\).*Received: variant='owt', "
                       r"classes=1000"):
        AlexNet(weights=run["dir"])
    with pytest.raises(ValueError, match=r"holds an AlexNet with variant='cifar', classes=3.*"
                       r"Received: variant='paper'"):
        AlexNet("paper", weights=run["keras"], classes=3)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, name="conv1")(inputs)
    x = keras.layers.Conv2D(256, 3, name="conv5")(x)
    other = keras.Model(inputs, keras.layers.MaxPooling2D(name="pool5")(x))
    other.save(tmp_path / "other.keras")
    with pytest.raises(ValueError, match=r"layer 'conv1' holds weights of shapes \[\(3, 3, 3, 8\)"):
        AlexNet("cifar", weights=str(tmp_path / "other.keras"), include_top=False)
    empty, _ = make_run(tmp_path / "empty", weights=())
    with pytest.raises(FileNotFoundError, match="holds no weights"):
        AlexNet("cifar", weights=empty, classes=3)


def test_preprocess_input_geometry():
    rng = np.random.default_rng(3)
    tall = rng.integers(0, 256, (512, 256, 3), dtype=np.uint8)
    # Shorter side already 256: the central 256x256, then its central 224x224.
    out = preprocess_input(tall)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (224, 224, 3)
    np.testing.assert_array_equal(out, tall[128 + 16:128 + 240, 16:240].astype(np.float32))
    square = rng.integers(0, 256, (2, 256, 256, 3), dtype=np.uint8)
    np.testing.assert_array_equal(preprocess_input(square, "paper"), square[:, 14:241, 14:241])
    cifar = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    as_tensor = preprocess_input(tf.constant(cifar), "cifar")
    assert tf.is_tensor(as_tensor) and as_tensor.dtype == tf.float32
    np.testing.assert_array_equal(as_tensor.numpy(), cifar)
    # Any size: the shorter side scaled to 256; a constant image stays constant.
    flat = np.full((300, 700, 3), (10, 120, 250), np.uint8)
    np.testing.assert_array_equal(preprocess_input(flat[None]),
                                  np.broadcast_to(np.float32([10, 120, 250]), (1, 224, 224, 3)))


@pytest.mark.parametrize("images, variant, match", [
    (np.zeros((32, 32), np.uint8), "cifar", r"Received: images.shape=\(32, 32\)"),
    (np.zeros((1, 32, 32, 4), np.uint8), "cifar", r"Received: images.shape=\(1, 32, 32, 4\)"),
    (np.zeros((32, 32, 3), np.uint8), "vgg", "Received: variant='vgg'"),
])
def test_preprocess_input_errors(images, variant, match):
    with pytest.raises(ValueError, match=match):
        preprocess_input(images, variant)


def _tsv_classes():
    """WordNet ids and names straight from the file the package ships."""
    rows = []
    with open(os.path.join(ROOT, "alexnet_tf", "data", "imagenet_classes.tsv"), encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                rows.append(tuple(line.rstrip("\n").split("\t")))
    return rows


def test_decode_predictions_imagenet():
    rows = _tsv_classes()
    preds = np.zeros((2, 1000), np.float32)
    preds[0, [3, 999, 0]] = [0.5, 0.3, 0.2]
    preds[1, [42, 7]] = [0.9, 0.1]
    decoded = decode_predictions(tf.constant(preds), top=3)
    assert decoded[0] == [(*rows[3], 0.5), (*rows[999], pytest.approx(0.3)), (*rows[0], pytest.approx(0.2))]
    assert [entry[:2] for entry in decoded[1][:2]] == [rows[42], rows[7]]
    assert decoded[1][2][2] == 0.0 and len(decode_predictions(preds)[0]) == 5
    assert isinstance(decoded[0][0][2], float)


def test_decode_predictions_with_class_names():
    preds = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], np.float32)
    decoded = decode_predictions(preds, top=5, class_names=CLASS_NAMES)
    assert decoded == [[("dog", "dog", pytest.approx(0.7)), ("bird", "bird", pytest.approx(0.2)),
                        ("cat", "cat", pytest.approx(0.1))],
                       [("cat", "cat", pytest.approx(0.6)), ("dog", "dog", pytest.approx(0.3)),
                        ("bird", "bird", pytest.approx(0.1))]]
    with pytest.raises(ValueError, match=r"\(samples, 1000\).*Received: preds.shape=\(2, 3\)"):
        decode_predictions(preds)
    with pytest.raises(ValueError, match=r"Received: preds.shape=\(3,\)"):
        decode_predictions(preds[0], class_names=CLASS_NAMES)
    with pytest.raises(ValueError, match="Received: top=0"):
        decode_predictions(preds, top=0, class_names=CLASS_NAMES)
