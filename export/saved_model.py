"""SavedModel export in TF Serving's layout: EXPORT_DIR/<model_name>/<version>/.

Three signatures, all preprocessing in the graph with `preprocess.eval_images`:
`serving_default` takes uint8 pixels, `serving_bytes` encoded JPEG/PNG files, and
`serving_features` uint8 pixels to fc7 features for retrieval.
The version folder also holds the class names (assets/labels.txt and a graph
constant) and warm-up requests (assets.extra/tf_serving_warmup_requests).
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import rundir, storage
from data_pipeline import preprocess
from export import common, serving_client

TOP_K = 5
# Serving limits, checked in the graph before any work: a request over them is
# an INVALID_ARGUMENT error, not an out-of-memory kill of the server.
MAX_BATCH = 128                 # images per request, both signatures
MAX_PIXELS = 4096 * 4096        # height * width of one image (16.8 MP)
BYTES_PARALLELISM = 4           # images of a serving_bytes request decoded at once
FEATURES_LAYER = "fc7"          # what serving_features returns
SIGNATURE_FEATURES = "serving_features"
LABELS_ASSET = "labels.txt"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def existing_versions(base_dir: str) -> list[int]:
    """The integer version folders in a model's base folder, ascending."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(n) for n in os.listdir(base_dir)
                  if n.isdigit() and os.path.isdir(os.path.join(base_dir, n)))


def _image_header_shape(data: tf.Tensor) -> tf.Tensor:
    """[height, width] int64 of one encoded image from its header, without decoding it.

    JPEG: `tf.io.extract_jpeg_shape` (reads markers up to SOF). PNG: the IHDR
    chunk, bytes 16..23, big-endian width then height. Anything else fails.
    """
    # The first 24 bytes, zero-padded: substr must not start past the end of a short string.
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(data, 0, 24), b"\0" * 24]), 0, 24)
    is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), _JPEG_MAGIC)
    is_png = tf.logical_and(tf.equal(tf.strings.substr(head, 0, 8), _PNG_MAGIC),
                            tf.equal(tf.strings.substr(head, 12, 4), b"IHDR"))
    known = tf.debugging.Assert(
        tf.logical_or(is_jpeg, is_png),
        ["image_bytes: an element is neither a JPEG nor a PNG file"], name="image_bytes_format")
    with tf.control_dependencies([known]):
        def png_shape():
            raw = tf.cast(tf.io.decode_raw(tf.strings.substr(head, 16, 8), tf.uint8), tf.int64)
            big_endian = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64)
            width = tf.reduce_sum(raw[:4] * big_endian)
            height = tf.reduce_sum(raw[4:] * big_endian)
            return tf.stack([height, width])

        def jpeg_shape():
            return tf.cast(tf.io.extract_jpeg_shape(data, name="image_bytes_jpeg_header")[:2],
                           tf.int64)

        return tf.cond(is_jpeg, jpeg_shape, png_shape)


def _check_pixels(height: tf.Tensor, width: tf.Tensor, input_name: str) -> tf.Operation:
    height = tf.cast(height, tf.int64)
    width = tf.cast(width, tf.int64)
    return tf.debugging.Assert(
        tf.logical_and(tf.logical_and(height >= 1, width >= 1), height * width <= MAX_PIXELS),
        [f"{input_name}: each image needs 1 to {MAX_PIXELS} pixels (height x width); got",
         height, "x", width], name=f"{input_name}_pixel_limit")


def _check_batch(batch: tf.Tensor, input_name: str) -> tf.Operation:
    return tf.debugging.Assert(
        batch <= MAX_BATCH,
        [f"{input_name}: at most {MAX_BATCH} images per request; got", batch],
        name=f"{input_name}_batch_limit")


def build_serving_functions(model, variant: str, class_names: list[str]):
    """The two serving `tf.function`s of a Keras classifier.

    Args:
        model: maps float32 [batch, crop, crop, 3] pixels in [0, 255] to logits.
        variant: the model variant (its eval geometry).
        class_names: names of the model's classes, in index order.

    Returns:
        (serving_default, serving_bytes), each with its input signature.
    """
    _, crop = preprocess.geometry(variant)
    k = min(TOP_K, len(class_names))
    names = tf.constant(class_names, dtype=tf.string)

    def outputs(pixels):
        pixels = tf.ensure_shape(pixels, [None, crop, crop, 3])
        probabilities = tf.nn.softmax(tf.cast(model(pixels, training=False), tf.float32), axis=-1)
        top_p, top_i = tf.math.top_k(probabilities, k=k)
        top_i = tf.cast(top_i, tf.int64)
        return {
            "probabilities": probabilities,
            "classes": top_i[:, 0],
            "class_names": tf.gather(names, top_i[:, 0]),
            "top_k_indices": top_i,
            "top_k_probabilities": top_p,
            "top_k_class_names": tf.gather(names, top_i),
        }

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serving_default(images):
        return outputs(preprocess.eval_images(_checked_images(images), variant))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_bytes(image_bytes):
        with tf.control_dependencies([_check_batch(tf.size(image_bytes), "image_bytes")]):
            image_bytes = tf.identity(image_bytes)

        def one(data):
            hw = _image_header_shape(data)
            with tf.control_dependencies([_check_pixels(hw[0], hw[1], "image_bytes")]):
                data = tf.identity(data)
            is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), _JPEG_MAGIC)
            image = tf.cond(
                is_jpeg,
                lambda: tf.io.decode_jpeg(data, channels=3, name="image_bytes_decode_jpeg"),
                lambda: tf.io.decode_png(data, channels=3, dtype=tf.uint8,
                                         name="image_bytes_decode_png"))
            image.set_shape([None, None, 3])
            return preprocess.eval_images(image, variant)

        pixels = tf.map_fn(one, image_bytes, parallel_iterations=BYTES_PARALLELISM,
                           fn_output_signature=tf.TensorSpec([crop, crop, 3], tf.float32))
        return outputs(pixels)

    return serving_default, serving_bytes


def _checked_images(images: tf.Tensor) -> tf.Tensor:
    """`images` after the rank, channel, batch and pixel checks (a client can send any shape)."""
    images = tf.ensure_shape(images, [None, None, None, 3], name="images_shape_check")
    shape = tf.shape(images)
    checks = [_check_batch(shape[0], "images"), _check_pixels(shape[1], shape[2], "images")]
    with tf.control_dependencies(checks):
        return tf.identity(images)


def build_features_function(model, variant: str):
    """The `serving_features` `tf.function`: uint8 pixels -> fc7 activations, for retrieval.

    Takes the input of `serving_default` (same checks and preprocessing) and returns
    `features`, float32 [batch, 4096] (1024 for `cifar`), fc7 after its ReLU, and
    `features_l2`, the same rows scaled to unit L2 norm (all-zero rows stay zero), whose
    dot products are cosine similarities.
    """
    extractor = keras.Model(model.inputs, model.get_layer(FEATURES_LAYER).output)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serving_features(images):
        pixels = preprocess.eval_images(_checked_images(images), variant)
        features = tf.cast(extractor(pixels, training=False), tf.float32)
        return {"features": features, "features_l2": tf.math.l2_normalize(features, axis=-1)}

    return serving_features


def warmup_requests(model_name: str, variant: str) -> list:
    """PredictionLog records exercising every signature (a resize, a JPEG and a PNG)."""
    from tensorflow_serving.apis import prediction_log_pb2

    stored, _ = preprocess.geometry(variant)
    h, w = stored + 8, stored + 24  # not the stored size: exercises the resize path
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                      (xx + yy) % 256], axis=-1).astype(np.uint8)
    jpeg = tf.io.encode_jpeg(image, quality=90).numpy()
    png = tf.io.encode_png(image[: stored, : stored]).numpy()
    requests = [
        serving_client.make_predict_request(model_name, images=image[None]),
        serving_client.make_predict_request(model_name, image_bytes=[jpeg, png]),
        serving_client.make_predict_request(model_name, images=image[None],
                                            signature_name=SIGNATURE_FEATURES),
    ]
    return [prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=r)) for r in requests]


def export_saved_model(model_dir: str, export_dir: str | None = None, *, checkpoint: str = "best",
                       version: int | None = None, model_name: str | None = None) -> str:
    """Exports a training run's weights as a TF Serving SavedModel.

    Writes into a hidden staging folder beside the version folder and renames
    it at the end, so a killed or failed export leaves no folder that TF
    Serving (which only loads integer-named folders) would load.

    Args:
        model_dir: the training run's folder (run.json and weights).
        export_dir: destination; defaults to MODEL_DIR/export.
        checkpoint: "best" or "latest" weights.
        version: the version number; defaults to one more than the highest
            existing version (1 for the first export).
        model_name: the served model's name; defaults to `alexnet_<variant>`.

    Returns:
        The version folder, EXPORT_DIR/<model_name>/<version>.

    Raises:
        FileNotFoundError: when the run or its weights are missing.
        FileExistsError: when the version folder already exists.
        NotADirectoryError: when the destination is a file.
        ValueError: on a bad version, checkpoint or model name.
    """
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                or version < 1):
        raise ValueError(f"`version` must be a positive integer. Received: version={version!r}")
    info = rundir.read_run_info(model_dir)
    name = common.model_name_for(info, model_name)
    class_names = common.class_names_of(info)
    model, info = rundir.load_trained_model(model_dir, checkpoint)
    base = os.path.join(common.resolve_export_dir(model_dir, export_dir), name)
    os.makedirs(base, exist_ok=True)
    if version is None:
        version = (existing_versions(base) or [0])[-1] + 1
    final = os.path.join(base, str(version))
    if os.path.lexists(final):
        raise FileExistsError(f"Version {version} of {name!r} already exists at {final!r}; "
                              "pass another --version or leave it out for the next free one.")

    serving_default, serving_bytes = build_serving_functions(model, info["variant"], class_names)
    serving_features = build_features_function(model, info["variant"])
    tmp = common.staging_dir(base, str(version))
    try:
        with storage.writing(final, common.RERUN_HINT):
            _write_saved_model(tmp, final, model, info, name, class_names, {
                "serving_default": serving_default, "serving_bytes": serving_bytes,
                SIGNATURE_FEATURES: serving_features})
    finally:
        common.remove_quietly(tmp)
    return final


def _write_saved_model(tmp, final, model, info, name, class_names, signatures: dict):
    """Writes the SavedModel with `signatures` (name -> tf.function) into the staging folder
    `tmp`, then renames it to `final`."""
    labels_src = os.path.join(tmp, LABELS_ASSET)  # copied to assets/ by name
    with open(labels_src, "w", encoding="utf-8") as f:
        f.write(common.labels_text(class_names))
    module = tf.Module()
    # The tf.Variables behind the Keras variables, so the SavedModel saves them.
    module.model_variables = [v.value for v in model.variables]
    module.labels = tf.saved_model.Asset(labels_src)
    for signature, function in signatures.items():
        setattr(module, signature, function)
    out = os.path.join(tmp, "model")
    tf.saved_model.save(module, out, signatures={
        signature: function.get_concrete_function() for signature, function in signatures.items()})
    os.makedirs(os.path.join(out, "assets.extra"))
    with tf.io.TFRecordWriter(os.path.join(out, WARMUP_FILE)) as writer:
        for record in warmup_requests(name, info["variant"]):
            writer.write(record.SerializeToString())
    common.publish_dir(out, final)
