"""Evaluation: top-1 / top-5 / loss, per-class accuracy and the confusion matrix (§4.1 10-crop)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras

from alexnet_tf.config import TTA_MODES
from data_pipeline import preprocess


def evaluate_dataset(model: keras.Model, dataset: tf.data.Dataset, variant: str,
                     num_classes: int, tta: str = "none") -> dict:
    """Evaluates `model` on batches of stored-size uint8 images.

    Args:
        model: the AlexNet (logits out).
        dataset: yields (uint8 [B, S, S, 3], int labels [B]) at the variant's stored size.
        variant: model variant (fixes the crop size).
        num_classes: class count.
        tta: "none" (the centre crop) or "10crop" (softmax averaged over the four
            corner crops, the centre crop and their mirrors).

    Returns:
        dict with `loss`, `top1`, `top5` (top-min(5, classes)), `count`,
        `per_class` (accuracy per class index, None for absent classes) and
        `confusion` ([true, predicted] counts) as lists.
    """
    if tta not in TTA_MODES:
        raise ValueError(f"`tta` must be one of {TTA_MODES}. Received: tta={tta!r}")
    _, crop = preprocess.geometry(variant)
    k = min(5, num_classes)

    @tf.function(reduce_retracing=True)
    def probabilities(images):
        if tta == "none":
            return tf.nn.softmax(tf.cast(model(preprocess.eval_images(images, variant), training=False),
                                         tf.float32))
        from data_pipeline.augment import AugmentConfig, ten_crop
        pad = AugmentConfig.for_variant(variant).pad  # cifar: corners of the padded 40x40, as trained
        if pad:
            images = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        crops = ten_crop(images, crop)  # [B, 10, crop, crop, 3]
        b = tf.shape(crops)[0]
        flat = tf.reshape(tf.cast(crops, tf.float32), [-1, crop, crop, 3])
        probs = tf.nn.softmax(tf.cast(model(flat, training=False), tf.float32))
        return tf.reduce_mean(tf.reshape(probs, [b, 10, -1]), axis=1)

    confusion = np.zeros((num_classes, num_classes), np.int64)
    loss_sum = 0.0
    topk_hits = 0
    for images, labels in dataset:
        probs = probabilities(images)
        labels = tf.cast(labels, tf.int32)
        loss_sum += float(tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(labels, probs)))
        topk_hits += int(tf.reduce_sum(tf.cast(tf.nn.in_top_k(labels, probs, k), tf.int32)))
        predicted = np.argmax(probs.numpy(), axis=-1)
        np.add.at(confusion, (labels.numpy(), predicted), 1)
    count = int(confusion.sum())
    if count == 0:
        raise ValueError("The evaluation split holds no images.")
    per_class_total = confusion.sum(axis=1)
    per_class = [float(confusion[i, i] / t) if t else None for i, t in enumerate(per_class_total)]
    return {
        "loss": loss_sum / count,
        "top1": float(np.trace(confusion) / count),
        "top5": topk_hits / count,
        "count": count,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def evaluate_run(model_dir: str, *, checkpoint: str = "best", tta: str = "none", split: str = "val",
                 dataset: str | None = None, data_dir: str | None = None, batch_size: int = 128) -> dict:
    """`python main.py evaluate`: evaluates a training run and writes MODEL_DIR/eval.json.

    Args:
        model_dir: the training run's folder.
        checkpoint: "best" or "latest" weights.
        tta: "none" or "10crop".
        split: "val" or "train".
        dataset, data_dir: another data source than the run's own (same classes).
        batch_size: evaluation batch.

    Returns:
        The metrics (see `evaluate_dataset`) plus `split`, `tta`, `checkpoint`, `class_names`.
        The confusion matrix also goes to TensorBoard (MODEL_DIR/logs/eval).

    Raises:
        FileNotFoundError: no run or no weights in `model_dir`.
        ValueError: bad arguments, or a dataset whose classes differ from the run's.
    """
    import json
    import os

    from alexnet_tf import rundir
    from data_pipeline.pipeline import labelled_folder

    if split not in ("val", "train"):
        raise ValueError(f"`split` must be 'val' or 'train'. Received: split={split!r}")
    model, info = rundir.load_trained_model(model_dir, checkpoint)
    if dataset == "folder" or (dataset is None and not info.get("dataset")):
        if not data_dir:
            raise ValueError(f"The run in {model_dir!r} names no dataset; pass --dataset=folder "
                             "--data_dir=FOLDER of class folders (named by class name or WordNet id).")
        # Class folders are matched to the run's classes by name (or WordNet id).
        data, _ = labelled_folder(data_dir, info["variant"], info["class_names"],
                                  aliases=info.get("class_ids"), split=split, batch_size=batch_size)
    else:
        data = _run_dataset(info, dataset, data_dir, split, batch_size)
    result = evaluate_dataset(model, data, info["variant"], info["num_classes"], tta=tta)
    result.update(split=split, tta=tta, checkpoint=checkpoint, class_names=info["class_names"])
    rundir.atomic_write_text(os.path.join(model_dir, rundir.EVAL), json.dumps(result, indent=2))
    plot_confusion(result["confusion"], info["class_names"], os.path.join(model_dir, rundir.CONFUSION))
    _log_confusion(model_dir, result)
    return result


def _log_confusion(model_dir: str, result: dict) -> None:
    """The confusion matrix in TensorBoard: MODEL_DIR/logs/eval, tag confusion/<split>/<weights>."""
    import os

    from alexnet_tf.tensorboard import log_confusion

    tag = f"confusion/{result['split']}/{result['checkpoint']}"
    if result["tta"] != "none":
        tag += f"/{result['tta']}"
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "logs", "eval"))
    try:
        log_confusion(writer, result["confusion"], result["class_names"], step=0, name=tag)
    finally:
        writer.close()


def _run_dataset(info: dict, dataset: str | None, data_dir: str | None, split: str,
                 batch_size: int) -> tf.data.Dataset:
    """The run's own dataset (or another of the same classes) in a fixed order."""
    from data_pipeline.pipeline import load_data

    run_config = info.get("config", {})
    source = load_data(dataset or info.get("dataset", "cifar10"),
                       data_dir if dataset or data_dir else info.get("data_dir"), info["variant"],
                       seed=run_config.get("seed", 0), num_classes=info["num_classes"],
                       synthetic_examples=run_config.get("synthetic_examples", 1024))
    if list(source.class_names) != list(info["class_names"]):
        raise ValueError(f"The dataset's classes {list(source.class_names)[:10]} differ from the "
                         f"run's {info['class_names'][:10]}.")
    return source.val_dataset(batch_size) if split == "val" else source.eval_train_dataset(batch_size)


def confusion_figure(confusion, class_names):
    """The confusion matrix as a matplotlib figure (rows: true class, columns: predicted)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion)
    n = len(class_names)
    size = min(20, 2 + 0.5 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    fig.tight_layout()
    return fig


def plot_confusion(confusion, class_names, path: str) -> None:
    """Writes the confusion matrix as a PNG (rows: true class, columns: predicted)."""
    import os

    import matplotlib.pyplot as plt

    fig = confusion_figure(confusion, class_names)
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
