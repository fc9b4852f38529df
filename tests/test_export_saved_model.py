"""The TF Serving SavedModel: layout, versions, signatures, parity with Keras, warm-up
records, serving limits, bad requests, and the gRPC client's request/response contract.

No model server runs here: requests go through the reloaded SavedModel's signatures,
which is what TF Serving executes.
"""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from data_pipeline import preprocess
from export import saved_model, serving_client
from test_export_common import (CLASS_NAMES, encode, jpeg_declaring, make_run, png_header_only,
                                random_images)

OUTPUTS = {"probabilities", "classes", "class_names", "top_k_indices", "top_k_probabilities",
           "top_k_class_names"}
FEATURE_OUTPUTS = {"features", "features_l2"}
AUGMENTATION_OPS = re.compile(r"Random|StatelessRandom|Multinomial|TruncatedNormal|Shuffle|Noise|Adjust")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("sm")
    model_dir, model = make_run(root / "run", seed=3)
    path = saved_model.export_saved_model(model_dir)
    loaded = tf.saved_model.load(path)
    return {"model_dir": model_dir, "model": model, "path": path, "loaded": loaded}


def keras_probabilities(model, images):
    """The in-memory model on the evaluation preprocessing of `images`."""
    return tf.nn.softmax(model(preprocess.eval_images(images, "cifar"), training=False)).numpy()


def run_signature(loaded, name, **inputs):
    outputs = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in outputs.items()}


def test_tf_serving_layout(exported):
    path = exported["path"]
    assert path == os.path.join(exported["model_dir"], "export", "alexnet_cifar", "1")
    for name in ("saved_model.pb", "variables/variables.index", "assets/labels.txt",
                 "assets.extra/tf_serving_warmup_requests"):
        assert os.path.isfile(os.path.join(path, name)), name
    with open(os.path.join(path, "assets", "labels.txt")) as f:
        assert f.read().splitlines() == CLASS_NAMES


def test_versions_never_overwrite(tmp_path):
    model_dir, _ = make_run(tmp_path / "run", seed=1)
    export_dir = str(tmp_path / "serving")
    first = saved_model.export_saved_model(model_dir, export_dir, model_name="net")
    second = saved_model.export_saved_model(model_dir, export_dir, model_name="net")
    assert first.endswith(os.path.join("net", "1")) and second.endswith(os.path.join("net", "2"))
    mtime = os.path.getmtime(os.path.join(first, "saved_model.pb"))
    with pytest.raises(FileExistsError, match="Version 1 of 'net' already exists"):
        saved_model.export_saved_model(model_dir, export_dir, model_name="net", version=1)
    assert os.path.getmtime(os.path.join(first, "saved_model.pb")) == mtime
    chosen = saved_model.export_saved_model(model_dir, export_dir, model_name="net", version=7)
    assert chosen.endswith(os.path.join("net", "7"))
    assert sorted(os.listdir(os.path.join(export_dir, "net"))) == ["1", "2", "7"]  # no staging left


def test_failed_export_leaves_no_version(tmp_path, monkeypatch):
    model_dir, _ = make_run(tmp_path / "run")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(saved_model.tf.saved_model, "save", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        saved_model.export_saved_model(model_dir)
    base = os.path.join(model_dir, "export", "alexnet_cifar")
    assert os.listdir(base) == []


def test_export_errors(tmp_path):
    model_dir, _ = make_run(tmp_path / "run", weights=())
    with pytest.raises(FileNotFoundError, match="No best weights"):
        saved_model.export_saved_model(model_dir)
    with pytest.raises(FileNotFoundError, match="no training run"):
        saved_model.export_saved_model(str(tmp_path / "nothing"))
    model_dir, _ = make_run(tmp_path / "run2")
    with pytest.raises(FileNotFoundError, match="No latest weights"):
        saved_model.export_saved_model(model_dir, checkpoint="latest")
    with pytest.raises(ValueError, match="`checkpoint` must be one of"):
        saved_model.export_saved_model(model_dir, checkpoint="final")
    with pytest.raises(ValueError, match="`version` must be a positive integer"):
        saved_model.export_saved_model(model_dir, version=0)
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(NotADirectoryError):
        saved_model.export_saved_model(model_dir, str(afile))


def test_signatures_named_inputs_and_outputs(exported):
    signatures = exported["loaded"].signatures
    assert set(signatures) == {"serving_default", "serving_bytes", "serving_features"}
    _, pixels = signatures["serving_default"].structured_input_signature
    assert pixels["images"].dtype == tf.uint8
    assert pixels["images"].shape.as_list() == [None, None, None, 3]
    _, encoded = signatures["serving_bytes"].structured_input_signature
    assert encoded["image_bytes"].dtype == tf.string
    assert encoded["image_bytes"].shape.as_list() == [None]
    for name in ("serving_default", "serving_bytes"):
        outputs = signatures[name].structured_outputs
        assert set(outputs) == OUTPUTS
        assert outputs["probabilities"].dtype == tf.float32
        assert outputs["probabilities"].shape.as_list() == [None, 3]
        assert outputs["class_names"].dtype == tf.string
        assert outputs["top_k_indices"].shape.as_list() == [None, 3]  # k = min(5, classes)


@pytest.mark.parametrize("height, width", [(32, 32), (45, 61), (20, 24)])
def test_serving_default_matches_keras(exported, height, width):
    images = random_images(4, height, width, seed=height)
    out = run_signature(exported["loaded"], "serving_default", images=images)
    expected = keras_probabilities(exported["model"], images)
    np.testing.assert_allclose(out["probabilities"], expected, rtol=0, atol=1e-5)
    order = np.argsort(-expected, axis=1, kind="stable")
    np.testing.assert_array_equal(out["classes"], order[:, 0])
    np.testing.assert_array_equal(out["top_k_indices"], order)
    np.testing.assert_allclose(out["top_k_probabilities"],
                               np.take_along_axis(expected, order, 1), atol=1e-5)
    names = np.array(CLASS_NAMES, dtype=object)
    assert [n.decode() for n in out["class_names"]] == list(names[order[:, 0]])
    assert out["top_k_class_names"].tolist() == [[n.encode() for n in row] for row in names[order]]


@pytest.mark.parametrize("height, width", [(32, 32), (45, 61)])
def test_serving_features_equal_keras_fc7(exported, height, width):
    _, pixels = exported["loaded"].signatures["serving_features"].structured_input_signature
    assert pixels["images"].dtype == tf.uint8
    assert pixels["images"].shape.as_list() == [None, None, None, 3]
    images = random_images(3, height, width, seed=width)
    out = run_signature(exported["loaded"], "serving_features", images=images)
    assert set(out) == FEATURE_OUTPUTS
    model = exported["model"]
    fc7 = tf.keras.Model(model.input, model.get_layer("fc7").output)
    expected = fc7(preprocess.eval_images(images, "cifar"), training=False).numpy()
    assert out["features"].dtype == np.float32 and out["features"].shape == (3, 1024)
    np.testing.assert_allclose(out["features"], expected, rtol=1e-5, atol=1e-5)
    norms = np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(out["features_l2"], expected / norms, atol=1e-6)


def test_serving_bytes_equals_serving_default_on_decoded_pixels(exported):
    loaded = exported["loaded"]
    images = random_images(2, 40, 52, seed=11)
    jpeg = encode(images[0], "JPEG", quality=85)
    png = encode(images[1], "PNG")
    out = run_signature(loaded, "serving_bytes", image_bytes=np.array([jpeg, png], dtype=object))
    # PNG is lossless: the decoded pixels are the original array.
    png_ref = run_signature(loaded, "serving_default", images=images[1:2])
    np.testing.assert_allclose(out["probabilities"][1], png_ref["probabilities"][0], atol=1e-6)
    # JPEG: the same file decoded outside the graph.
    decoded = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    jpeg_ref = run_signature(loaded, "serving_default", images=decoded[None])
    np.testing.assert_allclose(out["probabilities"][0], jpeg_ref["probabilities"][0], atol=1e-6)


def test_grayscale_and_alpha_png_become_rgb(exported):
    rgba = random_images(1, 32, 32, seed=5)[0]
    gray = rgba[..., 0]
    alpha = np.concatenate([rgba, np.full((32, 32, 1), 255, np.uint8)], axis=-1)
    out = run_signature(exported["loaded"], "serving_bytes",
                        image_bytes=np.array([encode(gray, "PNG"), encode(alpha, "PNG")], dtype=object))
    ref = run_signature(exported["loaded"], "serving_default",
                        images=np.stack([np.repeat(gray[..., None], 3, -1), rgba]))
    np.testing.assert_allclose(out["probabilities"], ref["probabilities"], atol=1e-6)


def test_warmup_records_run_against_their_signatures(exported):
    path = os.path.join(exported["path"], saved_model.WARMUP_FILE)
    seen = set()
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert request.model_spec.name == "alexnet_cifar"
        signature = request.model_spec.signature_name
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        out = run_signature(exported["loaded"], signature, **inputs)
        batch = len(next(iter(inputs.values())))
        seen.add(signature)
        if signature == "serving_features":
            assert set(out) == FEATURE_OUTPUTS and out["features"].shape == (batch, 1024)
            continue
        assert set(out) == OUTPUTS
        assert out["probabilities"].shape == (batch, 3)
        np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    assert seen == {"serving_default", "serving_bytes", "serving_features"}


def _graph_op_types(saved_model_dir):
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    ops = {node.op for node in graph.node}
    for function in graph.library.function:
        ops.update(node.op for node in function.node_def)
    return ops


def test_no_augmentation_op_in_the_graph(exported):
    ops = _graph_op_types(exported["path"])
    assert {"Conv2D", "LRN", "DecodeJpeg", "DecodePng", "ExtractJpegShape"} <= ops  # the scan sees the model
    assert not sorted(op for op in ops if AUGMENTATION_OPS.search(op))


def test_serving_bytes_refuses_huge_images_before_decoding(exported):
    loaded = exported["loaded"]
    for data in (png_header_only(50000, 50000), jpeg_declaring(50000, 50000)):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=f"image_bytes: each image needs 1 to {saved_model.MAX_PIXELS} pixels"):
            run_signature(loaded, "serving_bytes", image_bytes=np.array([data], dtype=object))


def test_batch_and_pixel_limits(exported):
    loaded = exported["loaded"]
    too_many = np.zeros([saved_model.MAX_BATCH + 1, 1, 1, 3], np.uint8)
    with pytest.raises(tf.errors.InvalidArgumentError, match="images: at most 128 images"):
        run_signature(loaded, "serving_default", images=too_many)
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_bytes: at most 128 images"):
        run_signature(loaded, "serving_bytes",
                      image_bytes=np.array([b"x"] * (saved_model.MAX_BATCH + 1), dtype=object))
    with pytest.raises(tf.errors.InvalidArgumentError, match="images: each image needs"):
        run_signature(loaded, "serving_default", images=np.zeros([1, 1, saved_model.MAX_PIXELS + 1, 3],
                                                                 np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="images: each image needs"):
        run_signature(loaded, "serving_default", images=np.zeros([1, 0, 5, 3], np.uint8))


def test_bad_requests_are_errors_not_crashes(exported):
    loaded = exported["loaded"]
    jpeg = encode(random_images(1, 16, 16)[0], "JPEG")
    bad_bytes = {b"garbage": "image_bytes: an element is neither a JPEG nor a PNG",
                 b"": "image_bytes: an element is neither a JPEG nor a PNG",
                 jpeg[:40]: "image_bytes",           # truncated JPEG: its header op fails
                 png_header_only(8, 8)[:-30]: "image_bytes"}  # PNG without its pixel data
    for data, message in bad_bytes.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            run_signature(loaded, "serving_bytes", image_bytes=np.array([data], dtype=object))
    with pytest.raises(tf.errors.InvalidArgumentError, match="uint8"):
        run_signature(loaded, "serving_default", images=np.zeros([1, 32, 32, 3], np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="images"):
        run_signature(loaded, "serving_default", images=np.zeros([32, 32, 3], np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="images"):
        run_signature(loaded, "serving_default", images=np.zeros([1, 32, 32, 4], np.uint8))
    # The model still serves afterwards.
    out = run_signature(loaded, "serving_bytes", image_bytes=np.array([jpeg], dtype=object))
    assert out["probabilities"].shape == (1, 3)


def _serve(loaded, request):
    """What TF Serving does with a PredictRequest, minus the network."""
    inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for name, value in outputs.items():
        response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
    return response


def test_grpc_client_contract(exported):
    loaded = exported["loaded"]
    images = random_images(3, 36, 30, seed=4)
    request = serving_client.make_predict_request("alexnet_cifar", images=images)
    assert request.model_spec.signature_name == "serving_default"
    parsed = serving_client.parse_predict_response(_serve(loaded, request))
    expected = keras_probabilities(exported["model"], images)
    np.testing.assert_allclose(parsed["probabilities"], expected, atol=1e-5)
    assert list(parsed["class_names"]) == [CLASS_NAMES[i] for i in expected.argmax(1)]
    assert parsed["top_k_class_names"].shape == (3, 3)

    files = [encode(images[0], "PNG"), encode(images[1], "JPEG")]
    request = serving_client.make_predict_request("alexnet_cifar", image_bytes=files, version=1)
    assert request.model_spec.signature_name == "serving_bytes"
    assert request.model_spec.version.value == 1
    parsed = serving_client.parse_predict_response(_serve(loaded, request))
    np.testing.assert_allclose(parsed["probabilities"][0], expected[0], atol=1e-5)
    assert parsed["classes"].dtype == np.int64


def test_grpc_client_validates_inputs():
    with pytest.raises(ValueError, match="`images` must be uint8"):
        serving_client.make_predict_request("m", images=np.zeros([1, 8, 8, 3], np.float32))
    with pytest.raises(ValueError, match=r"`images` must be \[batch, height, width, 3\]"):
        serving_client.make_predict_request("m", images=np.zeros([8, 8], np.uint8))
    with pytest.raises(ValueError, match="exactly one"):
        serving_client.make_predict_request("m")
    with pytest.raises(ValueError, match="list of encoded files"):
        serving_client.make_predict_request("m", image_bytes=b"abc")
