"""Classifies image files with an exported model (a SavedModel folder or a .tflite file) or
with a training run's folder, which can also explain each top class with Grad-CAM.

Files are decoded on the host; the SavedModel's `serving_default` signature
resizes and crops in its graph, TFLite and run inputs go through `preprocess.eval_images`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Sequence, TextIO

import numpy as np
import tensorflow as tf

from alexnet_tf import rundir
from data_pipeline import preprocess
from export import common
from export.saved_model import LABELS_ASSET, existing_versions
from export.tflite import labels_path_for


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The top-k classes of one file: (class name, class index, probability), best first;
    `explanation`: the Grad-CAM picture of the top class, when one was asked for."""
    path: str
    top_k: list
    explanation: str | None = None


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


class RunClassifier:
    """A training run's Keras model (its best weights): predictions and Grad-CAM at conv5."""

    def __init__(self, model_dir: str, checkpoint: str = "best"):
        self.path = model_dir
        self.model, info = rundir.load_trained_model(model_dir, checkpoint)
        self.variant = info["variant"]
        self.class_names = info.get("class_names")

    def crop(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> the evaluation crop, float32 [1, crop, crop, 3]."""
        return np.asarray(preprocess.eval_images(image[None], self.variant))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> probabilities [classes]."""
        logits = self.model(self.crop(image), training=False)
        return tf.nn.softmax(tf.cast(logits, tf.float32)).numpy()[0]

    def explain(self, image: np.ndarray, output: str) -> np.ndarray:
        """Probabilities of one image, and its Grad-CAM of the top class saved to `output`."""
        from alexnet_tf import gradcam

        pixels = self.crop(image)
        heat, _, logits = gradcam.grad_cam(self.model, pixels)
        gradcam.save_overlay(output, pixels[0], heat[0])
        return tf.nn.softmax(logits).numpy()[0]


def is_run_folder(path: str) -> bool:
    """Whether `path` is a training (or converted) run's folder: it holds run.json."""
    return os.path.isfile(os.path.join(path, rundir.RUN_INFO))


def _artifact_kind(artifact: str) -> str:
    if artifact.endswith(".tflite"):
        return "a .tflite file"
    if os.path.isdir(artifact) and not is_run_folder(artifact):
        return "a SavedModel (or another folder without run.json)"
    return "not a training run's folder"


def load_classifier(artifact: str):
    """A callable uint8 [H, W, 3] -> probabilities, for a SavedModel folder, a .tflite file or
    a training run's folder (its best weights).

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
    if is_run_folder(artifact):
        return RunClassifier(artifact)
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


def _explanation_path(folder: str, image_path: str, taken: set) -> str:
    """FOLDER/<stem>_gradcam.png; a stem seen before gets _2, _3, ... ."""
    stem = os.path.splitext(os.path.basename(image_path))[0]
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}"
    taken.add(name)
    return os.path.join(folder, f"{name}_gradcam.png")


def predict_files(artifact: str, paths: Sequence[str], top_k: int = 5, explain: str | None = None
                  ) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Classifies image files; folders are searched recursively.

    Args:
        artifact: a SavedModel folder (or a TF Serving base folder: its highest
            version), a .tflite file with its labels file beside it, or a training
            run's folder (its best weights).
        paths: image files and folders.
        top_k: classes reported per file.
        explain: a folder for Grad-CAM pictures of each file's top class
            (`<image stem>_gradcam.png`); needs a run folder as `artifact`.

    Returns:
        (results, failures): a `Prediction` per classified file, and
        (path, one-line reason) per file that could not be classified.

    Raises:
        FileNotFoundError, ValueError: when the artifact cannot be loaded,
            `top_k` is not positive, or `explain` is given without a run folder.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"`top_k` must be a positive integer. Received: top_k={top_k!r}")
    if explain is not None and not is_run_folder(artifact):
        # The serving graph of an export is frozen to named outputs: no gradients to conv5.
        raise ValueError(f"Grad-CAM (--explain) needs gradients at conv5, which only the training "
                         f"run's Keras model has; {artifact!r} is {_artifact_kind(artifact)}. "
                         f"Pass the run folder instead: --artifact=MODEL_DIR.")
    classifier = load_classifier(artifact)
    results, failures, taken = [], [], set()
    for path in _expand(paths):
        explanation = None
        try:
            image = decode_file(path)
            if explain is not None:
                explanation = _explanation_path(explain, path, taken)
                probabilities = classifier.explain(image, explanation)
            else:
                probabilities = classifier(image)
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
                                         for i in order], explanation))
    return results, failures


def print_predictions(results: Sequence[Prediction], failures: Sequence[tuple[str, str]],
                      out: TextIO | None = None, err: TextIO | None = None) -> None:
    """Prints the top-k per file (and its Grad-CAM picture) on `out`, and one line per failed
    file on `err` (default: the current sys.stdout and sys.stderr)."""
    out, err = out or sys.stdout, err or sys.stderr
    for result in results:
        print(result.path, file=out)
        for rank, (name, index, p) in enumerate(result.top_k, 1):
            print(f"  {rank}. {p:7.2%}  {name} ({index})", file=out)
        if result.explanation:
            print(f"  Grad-CAM: {result.explanation}", file=out)
    for path, reason in failures:
        print(f"Error: {path}: {reason}", file=err)
