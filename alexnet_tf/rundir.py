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
    MODEL_DIR/.lock               held by the one process that trains into the folder
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np

from alexnet_tf import storage
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
LOCK = ".lock"


def worker_dir(model_dir: str, worker_index: int) -> str:
    """The folder of a multi-worker run's non-chief worker, inside the chief's run folder."""
    return os.path.join(model_dir, f".worker-{worker_index}")


atomic_write_text = storage.atomic_write_text


def save_weights_atomic(model: keras.Model, path: str, hint: str = "") -> None:
    """Saves Keras weights to `path` whole or not at all.

    HDF5 can crash the process when the disk fills under it, so the file is written to a
    scratch file (in memory where there is room) and then copied into place; the copy
    fails cleanly. A full disk or a read-only folder is a one-line error naming `path`.
    """
    size = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights) + (1 << 20)
    storage.check_free_space(os.path.dirname(os.path.abspath(path)), size, path, hint)
    with storage.scratch_file(os.path.basename(path), size) as scratch:
        with storage.writing(path, hint):
            model.save_weights(scratch)
        storage.atomic_copy(scratch, path, hint)


def read_json(path: str, what: str = "") -> dict:
    """Reads a JSON file of a run; a damaged one is a ValueError that names it.

    Args:
        path: the file.
        what: what to do about it, appended to the message.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        message = f"{path} is damaged (not valid JSON: {e})"
        raise ValueError(message + (f"; {what}" if what else ".")) from None


def load_weights(model: keras.Model, path: str) -> None:
    """Loads a `.weights.h5` file into `model`; a damaged or foreign file is a ValueError that
    names it."""
    try:
        model.load_weights(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        reason = " ".join(str(e).split())[:200]
        raise ValueError(f"{path} cannot be read as this run's weights ({reason}). "
                         "A cut or damaged copy? Use the other weights file (--checkpoint) or "
                         "train again.") from None


def newest_weights(model_dir: str, what: str = "") -> str:
    """The weights file a run folder stands for: its best weights, else its latest.

    Raises:
        FileNotFoundError: when it holds neither (`what` names the folder in the message).
    """
    found = [os.path.join(model_dir, WEIGHTS[k]) for k in CHECKPOINTS
             if os.path.isfile(os.path.join(model_dir, WEIGHTS[k]))]
    if not found:
        raise FileNotFoundError(f"{what or repr(model_dir)} holds no weights yet (no "
                                f"{WEIGHTS['best']} or {WEIGHTS['latest']}).")
    return found[0]


def lock_path(model_dir: str) -> str:
    """The lock file that one training process holds while it writes the run folder."""
    return os.path.join(model_dir, LOCK)


def training_note(model_dir: str) -> str | None:
    """A line saying that `model_dir` is being trained right now, or None."""
    holder = storage.lock_holder(lock_path(model_dir))
    if holder is None:
        return None
    return (f"Note: {model_dir} is being trained right now ({holder}); "
            "using its last complete files.")


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
    return read_json(path, f"{RUN_INFO} describes the run; restore it from a copy, or train "
                           "into a new --model_dir")


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
    load_weights(model, path)
    return model, info
