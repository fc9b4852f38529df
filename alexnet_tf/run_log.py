"""A run's record of finished epochs: MODEL_DIR/log.csv, its TensorBoard scalars, the
summary of summary.json and the loss / top-1 curves."""

from __future__ import annotations

import csv
import dataclasses
import os
import time

import tensorflow as tf

from alexnet_tf import rundir, tensorboard


class RunLog:
    """The finished epochs of a run, oldest first: read from log.csv when a run resumes, and
    written (when `write`) to log.csv and TensorBoard as each epoch ends."""

    def __init__(self, model_dir: str, write: bool, pictures: bool = False):
        self.csv_path = os.path.join(model_dir, rundir.LOG_CSV)
        self.writer = (tf.summary.create_file_writer(os.path.join(model_dir, rundir.TENSORBOARD_DIR))
                       if write else None)
        self.pictures = pictures and self.writer is not None  # --tensorboard_pictures
        self.history = read_history(self.csv_path)

    def add(self, record: dict, model=None) -> None:
        """Adds a finished epoch's record (see `training._end_epoch` for its keys), with a
        histogram of each of `model`'s weights when given."""
        self.history.append(record)
        if self.writer is not None:
            if model is not None:
                tensorboard.log_weight_histograms(self.writer, model, int(record["epoch"]))
            log_epoch(self.csv_path, self.writer, record, self.history)

    def images(self, pixels, step: int) -> None:
        """16 training images (pixels in [0, 255]) as TensorBoard's `train/augmented` at `step`."""
        if self.pictures and pixels is not None:
            tensorboard.log_images(self.writer, "train/augmented", pixels, step)


def epoch_line(record: dict, lr_dropped: bool) -> str:
    """The line printed when an epoch ends."""
    top5 = f" val_top5 {record['val_top5']:.4f}" if record["val_top5"] is not None else ""
    return (f"epoch {record['epoch']}: loss {record['loss']:.4f} top1 {record['top1']:.4f} "
            f"val_loss {record['val_loss']:.4f} val_top1 {record['val_top1']:.4f}{top5} "
            f"lr {record['lr']:.3g}" + (" (learning rate divided by 10)" if lr_dropped else ""))


def read_history(csv_path: str) -> list[dict]:
    """The finished epochs that log.csv at `csv_path` records, oldest first ([] without one).

    Values are floats (None where empty); `epoch` and `train_images` are ints.
    """
    if not os.path.isfile(csv_path):
        return []
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    history = [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in rows]
    for record in history:
        for key in ("epoch", "train_images"):
            if record.get(key) is not None:
                record[key] = int(record[key])
    return history


def log_epoch(csv_path: str, writer, record: dict, history: list) -> None:
    """Rewrites log.csv with every epoch of `history` in the columns of `record`, and
    writes `record` as TensorBoard scalars at its epoch with `writer`."""
    fields = list(record)
    lines = [",".join(fields)]
    for r in history:
        lines.append(",".join("" if r.get(k) is None else repr(r.get(k)) for k in fields))
    rundir.atomic_write_text(csv_path, "\n".join(lines) + "\n")
    with writer.as_default(step=int(record["epoch"])):
        for key, value in record.items():
            if key != "epoch" and value is not None:
                tf.summary.scalar(key, value)
    writer.flush()


def summarize(config, history: list, start_time: float, num_classes: int) -> dict:
    """The run summary of summary.json: best and final validation metrics, training
    throughput, the time to each accuracy, the history and the settings (`config`)."""
    val = [r["val_top1"] for r in history]
    # Logs written before the per-epoch training counts existed leave those epochs out.
    timed = [r for r in history if r.get("train_images") is not None and r.get("train_seconds")]
    train_images = sum(r["train_images"] for r in timed)
    train_seconds = sum(r["train_seconds"] for r in timed)
    return {
        "best_val_top1": max(val) if val else None,
        "final_val_top1": val[-1] if val else None,
        "final_val_top5": history[-1]["val_top5"] if history and num_classes > 5 else None,
        "final_val_loss": history[-1]["val_loss"] if history else None,
        "epochs": len(history),
        "wall_seconds": time.time() - start_time,
        "images_per_second": train_images / train_seconds if train_seconds else None,
        "train_images": train_images,
        "train_seconds": train_seconds,
        "seconds_to_val_top1": seconds_to_accuracy(history),
        "history": history,
        "flags": dataclasses.asdict(config),
    }


def seconds_to_accuracy(history: list, thresholds=(0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)) -> dict:
    """Wall seconds from the start of the run to the end of the first epoch whose val top-1
    reaches each threshold (thresholds never reached are left out)."""
    out = {}
    for t in thresholds:
        reached = [r["wall_seconds"] for r in history if r["val_top1"] >= t]
        if reached:
            out[f"{t:g}"] = reached[0]
    return out


def plot_curves(history: list, path: str) -> None:
    """Writes train and val loss and top-1 per epoch as a PNG at `path` (nothing without epochs)."""
    if not history:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["loss"] for r in history], label="train")
    ax1.plot(epochs, [r["val_loss"] for r in history], label="val")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend()
    ax2.plot(epochs, [r["top1"] for r in history], label="train top-1")
    ax2.plot(epochs, [r["val_top1"] for r in history], label="val top-1")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy"), ax2.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
