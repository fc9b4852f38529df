"""TFLite export: the decomposed LRN, op lists and XNNPACK partitions, parity with the
SavedModel, int8 agreement on a briefly trained model, sizes, names and errors."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf.layers import LocalResponseNormalization
from alexnet_tf.model import build_alexnet
from export import saved_model, tflite
from export.predict import TFLiteClassifier
from test_export_common import make_run, random_images, separable_images

NUM_CLASSES = 3


def lrn_reference(a, size=5, k=2.0, alpha=1e-4, beta=0.75):
    """§3.3, written out: b[c] = a[c] / (k + alpha * sum_{j in window(c)} a[j]^2) ** beta."""
    out = np.empty_like(a, dtype=np.float64)
    channels = a.shape[-1]
    for c in range(channels):
        lo, hi = max(0, c - size // 2), min(channels - 1, c + size // 2)
        window = np.sum(a[..., lo:hi + 1].astype(np.float64) ** 2, axis=-1)
        out[..., c] = a[..., c] / (k + alpha * window) ** beta
    return out


@pytest.mark.parametrize("beta", [0.75, 0.5, 1.0, 0.6])
def test_decomposed_lrn_matches_the_paper_formula(beta):
    x = np.maximum(np.random.default_rng(0).normal(0, 20, (2, 5, 5, 12)), 0).astype(np.float32)
    y = LocalResponseNormalization(implementation="decomposed", beta=beta)(x).numpy()
    np.testing.assert_allclose(y, lrn_reference(x, beta=beta), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 30.0, 300.0])
def test_decomposed_lrn_matches_builtin_within_1e_5(scale):
    x = np.maximum(np.random.default_rng(1).normal(0, scale, (2, 8, 8, 64)), 0).astype(np.float32)
    builtin = LocalResponseNormalization(implementation="builtin")(x).numpy()
    decomposed = LocalResponseNormalization(implementation="decomposed")(x).numpy()
    # |delta| <= 1e-5 relative to the output's magnitude (float32 rounding of outputs ~50).
    assert np.max(np.abs(decomposed - builtin) / np.maximum(np.abs(builtin), 1.0)) <= 1e-5


def test_decomposed_lrn_config_round_trip():
    layer = LocalResponseNormalization(implementation="decomposed", size=3, k=1.0)
    clone = LocalResponseNormalization.from_config(layer.get_config())
    assert clone.implementation == "decomposed" and clone.size == 3 and clone.k == 1.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A cifar model trained briefly on separable generated images, exported as a SavedModel.

    Two epochs make its predictions confident, like a trained model's; after one,
    the softmax is nearly flat and int8's 1/256 output steps decide near-ties.
    """
    root = tmp_path_factory.mktemp("tflite")
    keras.utils.set_random_seed(0)
    model = build_alexnet("cifar", NUM_CLASSES, seed=0)
    model.compile(keras.optimizers.Adam(3e-4),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train_x, train_y = separable_images(640, NUM_CLASSES, seed=0, shift=14.0)
    model.fit(train_x.astype(np.float32), train_y, batch_size=32, epochs=2, verbose=0)
    model_dir, _ = make_run(root / "run", model=model, class_names=["a", "b", "c"])
    val_x, val_y = separable_images(300, NUM_CLASSES, seed=1, shift=14.0)
    sm_path = saved_model.export_saved_model(model_dir)
    loaded = tf.saved_model.load(sm_path)
    serve = loaded.signatures["serving_default"]
    sm_probs = np.concatenate([serve(images=tf.constant(val_x[i:i + 100]))["probabilities"].numpy()
                               for i in range(0, len(val_x), 100)])
    return {"model_dir": model_dir, "train_x": train_x, "val_x": val_x, "val_y": val_y,
            "sm_probs": sm_probs, "artifacts": {}}


def artifact(trained, quantize="none", lrn="builtin", batch=1):
    """Exports (once per module) and returns the .tflite path."""
    key = (quantize, lrn, batch)
    if key not in trained["artifacts"]:
        trained["artifacts"][key] = tflite.export_tflite(
            trained["model_dir"], quantize=quantize, lrn=lrn, batch=batch,
            calibration_data=[trained["train_x"][i:i + 32] for i in range(0, 128, 32)],
            calibration_steps=100)
    return trained["artifacts"][key]


def val_probabilities(path, images):
    classifier = TFLiteClassifier(path)
    b = classifier.batch
    return np.concatenate([classifier.run(images[i:i + b].astype(np.float32))
                           for i in range(0, len(images) - len(images) % b, b)])


def names(path):
    return [op.name for op in tflite.op_list(path)]


def test_file_names_and_labels(trained):
    export_dir = os.path.join(trained["model_dir"], "export")
    for (quantize, lrn), suffix in {("none", "builtin"): "alexnet_cifar_float32",
                                    ("float16", "builtin"): "alexnet_cifar_float16",
                                    ("dynamic", "builtin"): "alexnet_cifar_dynamic",
                                    ("int8", "decomposed"): "alexnet_cifar_lrn-decomposed_int8"}.items():
        path = artifact(trained, quantize, lrn)
        assert path == os.path.join(export_dir, suffix + ".tflite")
        with open(os.path.join(export_dir, suffix + ".labels.txt")) as f:
            assert f.read().splitlines() == ["a", "b", "c"]


def test_float32_builtin_lrn_op_and_static_batch(trained):
    path = artifact(trained)
    ops = names(path)
    assert ops.count("LOCAL_RESPONSE_NORMALIZATION") == 2
    assert not [op for op in ops if op.startswith(tflite.UNWANTED_OPS)]  # no Flex, no SHAPE/PACK
    classifier = TFLiteClassifier(path)
    assert list(classifier._input["shape"]) == [1, 32, 32, 3]
    assert classifier._input["dtype"] == np.float32
    # The wall: XNNPACK has no LRN, so the float graph splits around both LRN ops.
    assert tflite.xnnpack_partitions(path) == (3, ["LOCAL_RESPONSE_NORMALIZATION"] * 2)


def test_decomposed_float32_is_one_xnnpack_partition(trained):
    path = artifact(trained, lrn="decomposed")
    ops = names(path)
    assert "LOCAL_RESPONSE_NORMALIZATION" not in ops and ops.count("LOG") == ops.count("EXP") == 2
    assert tflite.xnnpack_partitions(path) == (1, [])


@pytest.mark.parametrize("lrn", ["builtin", "decomposed"])
def test_float32_matches_saved_model(trained, lrn):
    probs = val_probabilities(artifact(trained, lrn=lrn), trained["val_x"])
    assert np.max(np.abs(probs - trained["sm_probs"])) <= 1e-4


def test_float16_matches_saved_model(trained):
    probs = val_probabilities(artifact(trained, "float16"), trained["val_x"])
    assert np.max(np.abs(probs - trained["sm_probs"])) <= 1e-2


def test_int8_decomposed_is_integer_only(trained):
    path = artifact(trained, "int8", "decomposed")
    ops = tflite.op_list(path)
    assert tflite.float_ops(ops) == []
    assert ops[0].inputs == ("UINT8",) and ops[-1].outputs == ("UINT8",)
    assert "LOCAL_RESPONSE_NORMALIZATION" not in [op.name for op in ops]


def test_int8_builtin_keeps_float_lrn_islands(trained):
    ops = names(artifact(trained, "int8", "builtin"))
    i = ops.index("LOCAL_RESPONSE_NORMALIZATION")
    assert ops[i - 1:i + 2] == ["DEQUANTIZE", "LOCAL_RESPONSE_NORMALIZATION", "QUANTIZE"]


@pytest.mark.parametrize("lrn", ["decomposed", "builtin"])
def test_int8_agrees_with_float32(trained, lrn):
    float_probs = trained["sm_probs"]
    int8_probs = val_probabilities(artifact(trained, "int8", lrn), trained["val_x"])
    agreement = np.mean(int8_probs.argmax(1) == float_probs.argmax(1))
    float_accuracy = np.mean(float_probs.argmax(1) == trained["val_y"])
    int8_accuracy = np.mean(int8_probs.argmax(1) == trained["val_y"])
    assert 0.6 < float_accuracy  # the model learned something
    assert np.median(float_probs.max(1)) < 0.995  # and is not saturated: agreement is not trivial
    assert agreement >= 0.98
    assert float_accuracy - int8_accuracy <= 0.01


def test_sizes(trained):
    float32 = os.path.getsize(artifact(trained))
    assert 0.45 < os.path.getsize(artifact(trained, "float16")) / float32 < 0.55
    for quantize in ("dynamic", "int8"):
        assert 0.2 < os.path.getsize(artifact(trained, quantize, "decomposed")) / float32 < 0.3


def test_no_augmentation_ops(trained):
    for quantize, lrn in [("none", "builtin"), ("float16", "builtin"), ("int8", "decomposed")]:
        assert not [op for op in names(artifact(trained, quantize, lrn))
                    if "RANDOM" in op or "MULTINOMIAL" in op]


def test_static_batch_four(trained):
    path = artifact(trained, batch=4)
    assert os.path.basename(path) == "alexnet_cifar_batch4_float32.tflite"
    classifier = TFLiteClassifier(path)
    assert list(classifier._input["shape"]) == [4, 32, 32, 3]
    assert not [op for op in names(path) if op.startswith(tflite.UNWANTED_OPS)]
    probs = val_probabilities(path, trained["val_x"][:8])
    np.testing.assert_allclose(probs, trained["sm_probs"][:8], atol=1e-4)


def test_existing_artifact_is_not_overwritten(trained):
    path = artifact(trained)
    before = os.path.getmtime(path)
    with pytest.raises(FileExistsError, match="already exists"):
        tflite.export_tflite(trained["model_dir"])
    assert os.path.getmtime(path) == before


def test_bad_arguments(tmp_path):
    model_dir, _ = make_run(tmp_path / "run")
    with pytest.raises(ValueError, match="`quantize` must be one of"):
        tflite.export_tflite(model_dir, quantize="int4")
    with pytest.raises(ValueError, match="`lrn` must be one of"):
        tflite.export_tflite(model_dir, lrn="banded")
    with pytest.raises(ValueError, match="`batch` must be a positive integer"):
        tflite.export_tflite(model_dir, batch=0)
    with pytest.raises(ValueError, match="`calibration_steps` must be a positive integer"):
        tflite.export_tflite(model_dir, calibration_steps=0)
    with pytest.raises(ValueError, match="fewer than 1 images"):
        tflite.export_tflite(model_dir, quantize="int8", calibration_data=[])
    with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
        tflite.export_tflite(model_dir, quantize="int8", calibration_data=[np.zeros([4, 32, 32])])
    with pytest.raises(FileNotFoundError, match="No latest weights"):
        tflite.export_tflite(model_dir, checkpoint="latest")
    (tmp_path / "afile").write_text("")
    with pytest.raises(NotADirectoryError):
        tflite.export_tflite(model_dir, str(tmp_path / "afile"))
    os.makedirs(os.path.join(model_dir, "export", "alexnet_cifar_float32.tflite"))
    with pytest.raises(FileExistsError, match="already exists"):
        tflite.export_tflite(model_dir)


def test_calibration_samples_accept_pairs_and_any_size():
    batches = [(random_images(3, 40, 50, seed=i), np.zeros(3)) for i in range(3)]
    samples = tflite.calibration_samples(batches, "cifar", batch=2, steps=5)
    assert [s.shape for s in samples] == [(2, 32, 32, 3)] * 2
    assert samples[0].dtype == np.float32


def test_calibration_batches_come_from_the_runs_dataset(tmp_path):
    model_dir, _ = make_run(tmp_path / "run", dataset="synthetic", data_dir=None,
                            config={"seed": 4, "synthetic_examples": 64})
    batches = list(tflite.calibration_batches(model_dir, max_images=40, batch_size=16))
    assert sum(len(b) for b in batches) == 40
    assert batches[0].dtype == np.uint8 and batches[0].shape[1:] == (32, 32, 3)
    again = list(tflite.calibration_batches(model_dir, max_images=40, batch_size=16))
    np.testing.assert_array_equal(batches[0], again[0])
    bare_dir, _ = make_run(tmp_path / "bare")
    with pytest.raises(ValueError, match="names no dataset"):
        next(tflite.calibration_batches(bare_dir))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["paper", "owt"])
def test_imagenet_variants_convert(tmp_path, variant):
    model_dir, model = make_run(tmp_path / "run", variant=variant, num_classes=4,
                                class_names=list("abcd"))
    images = random_images(2, 256, 256)
    expected = tf.nn.softmax(model(images[:, 14:241, 14:241].astype(np.float32) if variant == "paper"
                                   else images[:, 16:240, 16:240].astype(np.float32))).numpy()
    for lrn in ("builtin", "decomposed"):
        if lrn == "decomposed" and variant == "owt":
            continue
        path = tflite.export_tflite(model_dir, lrn=lrn)
        classifier = TFLiteClassifier(path)
        assert classifier.variant == variant
        np.testing.assert_allclose(np.stack([classifier(img) for img in images]), expected, atol=1e-4)
    path = tflite.export_tflite(model_dir, quantize="int8", lrn="decomposed",
                                calibration_data=[random_images(8, 256, 256)], calibration_steps=8)
    assert tflite.float_ops(tflite.op_list(path)) == []
