"""Feature vectors of image files: a trained model's pool5 (flattened), fc6 or fc7 activations.

`python main.py features` writes them to an .npz file; `visualize --show=neighbors` compares
fc7 vectors by Euclidean distance, as in Figure 4 of the paper (§6.1).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf.config import FEATURE_LAYERS
from data_pipeline import preprocess, sources

# The arrays of a features .npz file.
NPZ_KEYS = ("features", "paths", "labels", "layer", "class_names")


@dataclasses.dataclass
class Features:
    """One feature vector per readable image file.

    Attributes:
        features: float32 [N, D].
        paths: the N files, in the order of `features`.
        labels: int32 [N]: class index, -1 for a file outside any class folder.
        layer: the layer the vectors come from.
        class_names: the names the labels index (empty when there are no labels).
        skipped: (path, reason) of each unreadable file.
    """
    features: np.ndarray
    paths: list[str]
    labels: np.ndarray
    layer: str
    class_names: list[str] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def check_layer(layer: str) -> str:
    """Returns `layer`, or raises ValueError when it is not one of `FEATURE_LAYERS`."""
    if layer not in FEATURE_LAYERS:
        raise ValueError(f"`layer` must be one of {FEATURE_LAYERS}. Received: layer={layer!r}")
    return layer


def feature_extractor(model: keras.Model, layer: str = "fc7") -> keras.Model:
    """A model from `model`'s input to one of its layers' output.

    fc6 and fc7 give the Dense layer's output, which is after its ReLU; pool5 is flattened
    to [batch, h * w * c] in the order of the model's own `flatten`.

    Args:
        model: an AlexNet built by `build_alexnet` (or any model with that layer name).
        layer: "pool5", "fc6" or "fc7".

    Returns:
        A `keras.Model` mapping the model's input (float pixels in [0, 255] at the crop
        size) to float [batch, D] vectors.

    Raises:
        ValueError: an unknown layer name, or a model without that layer.
    """
    check_layer(layer)
    try:
        output = model.get_layer(layer).output
    except ValueError:
        raise ValueError(f"The model {model.name!r} has no layer named {layer!r}. "
                         f"Received: layer={layer!r}") from None
    if len(output.shape) > 2:
        output = keras.layers.Flatten(name=f"{layer}_flat")(output)
    return keras.Model(model.input, output, name=f"{model.name}_{layer}")


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def _decoded_batches(files: sources.ImageFiles, size: int, batch_size: int) -> tf.data.Dataset:
    """uint8 [b, size, size, 3] batches of validated files, in their order (none dropped)."""
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(files.paths.tolist(), tf.string),
                                             tf.constant(files.contents.tolist(), tf.string)))
    ds = ds.map(lambda path, contents: sources.read_and_decode(path, contents, size),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def extract_features(model: keras.Model, variant: str, paths: Sequence[str], layer: str = "fc7",
                     batch_size: int = 128, *, labels: Sequence[int] | None = None,
                     verbose: int = 1) -> Features:
    """Runs image files through the evaluation geometry and `model` up to `layer`.

    Each file is scaled and centre-cropped as in evaluation (`preprocess.eval_images`).
    Unreadable files are skipped, with one warning line each.

    Args:
        model: the AlexNet.
        variant: its variant (fixes the image geometry).
        paths: image files.
        layer: "pool5", "fc6" or "fc7".
        batch_size: images per forward pass.
        labels: an int label per path (default: -1 each).
        verbose: 1 shows a progress bar, 0 nothing.

    Returns:
        A `Features` with the readable files' vectors, in the order of `paths`.

    Raises:
        ValueError: a bad layer, variant or batch size, or labels of another length.
    """
    extractor = feature_extractor(model, layer)
    batch_size = _positive("batch_size", batch_size)
    stored, _ = preprocess.geometry(variant)
    paths = [str(p) for p in paths]
    labels = np.full(len(paths), -1, np.int32) if labels is None else np.asarray(labels, np.int32)
    if len(labels) != len(paths):
        raise ValueError(f"`labels` needs one label per path. Received: {len(labels)} labels "
                         f"for {len(paths)} paths.")
    dim = int(np.prod(extractor.output.shape[1:]))
    if not paths:
        return Features(np.zeros((0, dim), np.float32), [], labels, layer)
    files, skipped = sources.validate_image_files(paths, labels, log=False)
    for path, reason in skipped:
        logging.warning("Skipped %s: %s", path, reason)

    @tf.function(reduce_retracing=True)
    def forward(images):  # uint8 [b, stored, stored, 3] -> float32 [b, dim]
        return tf.cast(extractor(preprocess.eval_images(images, variant), training=False), tf.float32)

    chunks = [np.zeros((0, dim), np.float32)]
    progress = keras.utils.Progbar(len(files), unit_name="image") if verbose else None
    if len(files):
        for images in _decoded_batches(files, stored, batch_size):
            chunks.append(forward(images).numpy())
            if progress is not None:
                progress.add(len(chunks[-1]))
    return Features(features=np.concatenate(chunks), paths=list(files.paths), labels=files.labels,
                    layer=layer, skipped=skipped)


def folder_labels(folder: str, paths: Sequence[str], class_names: Sequence[str],
                  aliases: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Labels of files by the top-level folder of `folder` they lie in.

    When every such folder is named by one of `class_names` (or `aliases`, e.g. WordNet
    ids), a file's label is that class's index; otherwise the folders are numbered in
    sorted order. Files directly in `folder` get -1.

    Returns:
        (int32 labels [N], the class names the labels index).
    """
    tops = []
    for path in paths:
        parts = os.path.relpath(path, folder).split(os.sep)
        tops.append(parts[0] if len(parts) > 1 else None)
    found = sorted({t for t in tops if t is not None})
    index = {name: i for i, name in enumerate(class_names)}
    index.update({alias: i for i, alias in enumerate(aliases or [])})
    if found and all(name in index for name in found):
        names = list(class_names)
    else:
        index = {name: i for i, name in enumerate(found)}
        names = found
    labels = np.asarray([-1 if t is None else index[t] for t in tops], np.int32)
    return labels, names if found else []


def folder_features(model: keras.Model, info: dict, folder: str, layer: str = "fc7",
                    batch_size: int = 128, verbose: int = 1) -> Features:
    """The features of every image file under `folder` (any depth), labelled by class folder.

    Args:
        model: the run's model.
        info: the run's run.json (variant, class_names, class_ids).
        folder: a folder of images, with or without class folders.
        layer, batch_size, verbose: see `extract_features`.

    Raises:
        FileNotFoundError: `folder` does not exist.
        ValueError: it holds no image file, or a bad argument.
    """
    sources.require_folder(folder, "Features need a folder of images", "image folder")
    paths = sources.list_image_files(folder)
    if not paths:
        raise ValueError(f"{folder} holds no image files ({', '.join(sources.IMAGE_EXTENSIONS)}).")
    labels, names = folder_labels(folder, paths, info.get("class_names", []), info.get("class_ids"))
    result = extract_features(model, info["variant"], paths, layer, batch_size, labels=labels,
                              verbose=verbose)
    result.class_names = names
    return result


def save_features(path: str, features: Features) -> None:
    """Writes `features` as an uncompressed .npz (see `NPZ_KEYS`), via a temporary file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, features=features.features.astype(np.float32),
                     paths=np.asarray(features.paths, dtype=str),
                     labels=np.asarray(features.labels, np.int32), layer=np.asarray(features.layer),
                     class_names=np.asarray(features.class_names, dtype=str))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_features(path: str) -> Features:
    """Reads an .npz written by `save_features`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file lacks one of the arrays.
    """
    with np.load(path) as data:
        missing = [k for k in NPZ_KEYS if k not in data]
        if missing:
            raise ValueError(f"{path} is not a features file: it lacks {missing}.")
        return Features(features=data["features"], paths=data["paths"].tolist(),
                        labels=data["labels"], layer=str(data["layer"]),
                        class_names=data["class_names"].tolist())


def run_features(model_dir: str, data_dir: str, output: str, *, layer: str = "fc7",
                 batch_size: int = 128, checkpoint: str = "best", verbose: int = 1) -> Features:
    """`python main.py features`: a run's feature vectors of every image under `data_dir`.

    Args:
        model_dir: the training (or converted) run's folder.
        data_dir: a folder of images, with or without class folders.
        output: the .npz file to write.
        layer: "pool5", "fc6" or "fc7".
        batch_size: images per forward pass.
        checkpoint: "best" or "latest" weights.
        verbose: 1 shows a progress bar.

    Returns:
        The `Features` written.

    Raises:
        FileNotFoundError: no run, weights or folder.
        ValueError: bad arguments, or no readable image.
    """
    from alexnet_tf import rundir

    check_layer(layer)
    _positive("batch_size", batch_size)
    sources.require_folder(data_dir, "Features need --data_dir: a folder of images", "image folder")
    model, info = rundir.load_trained_model(model_dir, checkpoint)
    result = folder_features(model, info, data_dir, layer, batch_size, verbose=verbose)
    if not len(result.paths):
        raise ValueError(f"{data_dir} holds no readable image; nothing written.")
    save_features(output, result)
    return result
