"""Classifies image files with an exported model: a SavedModel folder or a .tflite file.

Files are decoded on the host; the SavedModel's `serving_default` signature
resizes and crops in its graph, TFLite inputs go through `preprocess.eval_images`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Sequence, TextIO

import numpy as np
import tensorflow as tf

from data_pipeline import preprocess
from export import common
from export.saved_model import LABELS_ASSET, existing_versions
from export.tflite import labels_path_for


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The top-k classes of one file: (class name, class index, probability), best first."""
    path: str
    top_k: list


def _saved_model_dir(artifact: str) -> str:
    if os.path.isfile(os.path.join(artifact, "saved_model.pb")):
        return artifact
    versions = [v for v in existing_versions(artifact)
                if os.path.isfile(os.path.join(artifact, str(v), "saved_model.pb"))]
    if versions:  # a TF Serving base folder: its highest version, as the server would serve
        return os.path.join(artifact, str(versions[-1]))
    raise ValueError(f"{artifact!r} is neither a SavedModel folder (no saved_model.pb) nor a "
                     "folder of numbered SavedModel versions.")


class SavedModelClassifier:
    """Runs the `serving_default` signature of an exported SavedModel."""

    def __init__(self, path: str):
        self.path = _saved_model_dir(path)
        loaded = tf.saved_model.load(self.path)
        if "serving_default" not in loaded.signatures:
            raise ValueError(f"{self.path!r} has no serving_default signature.")
        self._loaded = loaded  # keeps the variables alive
        self._fn = loaded.signatures["serving_default"]
        labels = os.path.join(self.path, "assets", LABELS_ASSET)
        self.class_names = common.read_labels(labels) if os.path.isfile(labels) else None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> probabilities [classes]."""
        return self._fn(images=tf.constant(image[None]))["probabilities"].numpy()[0]


class TFLiteClassifier:
    """Runs a .tflite artifact with the LiteRT interpreter."""

    def __init__(self, path: str, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.path = path
        self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        batch, height, width, _ = self._input["shape"]
        if height != width:
            raise ValueError(f"{path!r} has a non-square input {height}x{width}.")
        self.batch = int(batch)
        self.variant = common.variant_for_crop(int(height))
        labels = labels_path_for(path)
        self.class_names = common.read_labels(labels) if os.path.isfile(labels) else None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """float32 [batch, crop, crop, 3] model inputs -> probabilities [batch, classes]."""
        x = pixels
        if self._input["dtype"] != np.float32:
            scale, zero_point = self._input["quantization"]
            info = np.iinfo(self._input["dtype"])
            x = np.clip(np.round(pixels / scale + zero_point), info.min, info.max)
        self._interpreter.set_tensor(self._input["index"], x.astype(self._input["dtype"]))
        self._interpreter.invoke()
        y = self._interpreter.get_tensor(self._output["index"])
        if self._output["dtype"] != np.float32:
            scale, zero_point = self._output["quantization"]
            y = (y.astype(np.float32) - zero_point) * scale
        return y

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> probabilities [classes]."""
        pixels = np.asarray(preprocess.eval_images(image[None], self.variant))
        pixels = np.repeat(pixels, self.batch, axis=0)  # a static batch > 1: fill it
        return self.run(pixels)[0]


def load_classifier(artifact: str):
    """A callable uint8 [H, W, 3] -> probabilities, for a SavedModel folder or a .tflite file.

    Raises:
        FileNotFoundError: when `artifact` does not exist.
        ValueError: when it is not a model this project exports.
    """
    if not os.path.exists(artifact):
        raise FileNotFoundError(f"No model at {artifact!r}.")
    if artifact.endswith(".tflite"):
        if os.path.isdir(artifact):
            raise ValueError(f"{artifact!r} is a folder, not a .tflite file.")
        return TFLiteClassifier(artifact)
    if os.path.isdir(artifact):
        return SavedModelClassifier(artifact)
    raise ValueError(f"{artifact!r} is neither a SavedModel folder nor a .tflite file.")


def _expand(paths: Sequence[str]) -> list[str]:
    files = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, names in os.walk(path):
                dirs.sort()
                files.extend(os.path.join(root, n) for n in sorted(names) if not n.startswith("."))
        else:
            files.append(path)
    return files


def decode_file(path: str) -> np.ndarray:
    """An image file's pixels, uint8 [H, W, 3] (first frame of an animation).

    Raises:
        ValueError: when the file is not a decodable image.
        OSError: when it cannot be read.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
        raise ValueError("not a decodable image (JPEG, PNG, GIF, BMP or WebP)") from None
    return image.numpy()


def predict_files(artifact: str, paths: Sequence[str], top_k: int = 5
                  ) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Classifies image files; folders are searched recursively.

    Args:
        artifact: a SavedModel folder (or a TF Serving base folder: its highest
            version) or a .tflite file with its labels file beside it.
        paths: image files and folders.
        top_k: classes reported per file.

    Returns:
        (results, failures): a `Prediction` per classified file, and
        (path, one-line reason) per file that could not be classified.

    Raises:
        FileNotFoundError, ValueError: when the artifact cannot be loaded or
            `top_k` is not positive.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive integer. Received: top_k={top_k!r}")
    classifier = load_classifier(artifact)
    results, failures = [], []
    for path in _expand(paths):
        try:
            probabilities = classifier(decode_file(path))
        except (ValueError, OSError) as e:
            failures.append((path, str(e).splitlines()[0] if str(e) else type(e).__name__))
            continue
        except tf.errors.OpError as e:  # e.g. over the serving signature's pixel limit
            message = next((line for line in e.message.splitlines() if "assertion failed" in line),
                           e.message.splitlines()[0])
            failures.append((path, message.strip()))
            continue
        names = classifier.class_names or [str(i) for i in range(len(probabilities))]
        order = np.argsort(-probabilities, kind="stable")[:top_k]
        results.append(Prediction(path, [(names[i], int(i), float(probabilities[i]))
                                         for i in order]))
    return results, failures


def print_predictions(results: Sequence[Prediction], failures: Sequence[tuple[str, str]],
                      out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
    """Prints the top-k per file, and one line per failed file on `err`."""
    for result in results:
        print(result.path, file=out)
        for rank, (name, index, p) in enumerate(result.top_k, 1):
            print(f"  {rank}. {p:7.2%}  {name} ({index})", file=out)
    for path, reason in failures:
        print(f"Error: {path}: {reason}", file=err)
