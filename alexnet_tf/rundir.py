"""The layout of a training run's folder (`--model_dir`) and loading a trained model from it.

Every file name inside a run folder is spelled here and nowhere else:

    MODEL_DIR/run.json            variant, class count and names, model options, flags
    MODEL_DIR/best.weights.h5     weights with the best validation top-1
    MODEL_DIR/latest.weights.h5   weights at the end of the last finished epoch
    MODEL_DIR/ckpt/               full training state for resuming (see training.TrainState)
    MODEL_DIR/pca.json            RGB eigen-decomposition of the PCA colour jitter (--pca_std)
    MODEL_DIR/log.csv             one row of metrics per finished epoch
    MODEL_DIR/logs/               the same metrics as TensorBoard scalars
    MODEL_DIR/summary.json        the run summary, written when training ends
    MODEL_DIR/curves.png          loss and top-1 per epoch
    MODEL_DIR/eval.json           metrics of the last `main.py evaluate`
    MODEL_DIR/confusion.png       its confusion matrix
    MODEL_DIR/export/             where `main.py export` writes by default
    MODEL_DIR/.worker-N/          a multi-worker run's other workers' own files
"""

from __future__ import annotations

import json
import os
import tempfile

import keras

from alexnet_tf.config import CHECKPOINTS
from alexnet_tf.model import build_alexnet

RUN_INFO = "run.json"
WEIGHTS = {name: f"{name}.weights.h5" for name in CHECKPOINTS}
CHECKPOINT_DIR = "ckpt"
PCA = "pca.json"
LOG_CSV = "log.csv"
TENSORBOARD_DIR = "logs"
SUMMARY = "summary.json"
CURVES = "curves.png"
EVAL = "eval.json"
CONFUSION = "confusion.png"
EXPORT_DIR = "export"


def worker_dir(model_dir: str, worker_index: int) -> str:
    """The folder of a multi-worker run's non-chief worker, inside the chief's run folder."""
    return os.path.join(model_dir, f".worker-{worker_index}")


def atomic_write_text(path: str, text: str) -> None:
    """Writes `text` to `path` so that a reader sees the old file or the whole new one."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_weights_atomic(model: keras.Model, path: str) -> None:
    """Saves Keras weights to `path` via a temporary file and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        model.save_weights(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_run_info(model_dir: str, info: dict) -> None:
    """Writes MODEL_DIR/run.json (keys: variant, num_classes, class_names, model_kwargs, ...)."""
    atomic_write_text(os.path.join(model_dir, RUN_INFO), json.dumps(info, indent=2, sort_keys=True))


def read_run_info(model_dir: str) -> dict:
    """Reads MODEL_DIR/run.json.

    Raises:
        FileNotFoundError: when `model_dir` holds no training run.
    """
    path = os.path.join(model_dir, RUN_INFO)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{model_dir!r} holds no training run (no {RUN_INFO}). "
            f"Train one first: python main.py train --model_dir={model_dir}")
    with open(path) as f:
        return json.load(f)


def build_from_run_info(info: dict, **overrides) -> keras.Model:
    """Builds the (untrained) model that a run describes; `overrides` replace model options."""
    kwargs = dict(info.get("model_kwargs", {}))
    kwargs.update(overrides)
    return build_alexnet(info["variant"], info["num_classes"], **kwargs)


def load_trained_model(model_dir: str, checkpoint: str = "best", **overrides):
    """Rebuilds a run's model and loads its best or latest weights.

    Args:
        model_dir: the training run's folder.
        checkpoint: "best" or "latest".
        **overrides: model options to change (e.g. `lrn_implementation`).

    Returns:
        (model, info): the `keras.Model` and the run's `run.json` as a dict.

    Raises:
        ValueError: on an unknown `checkpoint`.
        FileNotFoundError: when the run or the weights file is missing.
    """
    if checkpoint not in WEIGHTS:
        raise ValueError(f"`checkpoint` must be one of {sorted(WEIGHTS)}. Received: checkpoint={checkpoint!r}")
    info = read_run_info(model_dir)
    path = os.path.join(model_dir, WEIGHTS[checkpoint])
    if not os.path.isfile(path):
        other = [k for k, v in WEIGHTS.items() if os.path.isfile(os.path.join(model_dir, v))]
        hint = f" Available: {other}." if other else " The run has not finished an epoch yet."
        raise FileNotFoundError(f"No {checkpoint} weights in {model_dir!r} ({path} is missing).{hint}")
    model = build_from_run_info(info, **overrides)
    model.load_weights(path)
    return model, info
