"""Accuracy of exported TFLite artifacts on a run's val split, and top-1 agreement with the first.

    python bench/tflite_accuracy.py --model_dir=RUN ARTIFACT.tflite [ARTIFACT.tflite ...]

The first artifact is the reference for agreement (e.g. the float32 file). The
Keras model (best weights) is evaluated alongside.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app, flags, logging

from alexnet_tf import rundir
from data_pipeline import preprocess
from data_pipeline.pipeline import load_data
from export.predict import TFLiteClassifier


def evaluate_artifacts(model_dir: str, artifacts: list[str], max_images: int | None = None) -> list[dict]:
    """Top-1 of the Keras model and of each artifact on the run's val split; agreement with artifacts[0]."""
    model, info = rundir.load_trained_model(model_dir)
    config = info.get("config", {})
    source = load_data(info["dataset"], info.get("data_dir"), info["variant"], seed=config.get("seed", 0),
                       num_classes=info["num_classes"])
    images, labels = [], []
    for x, y in source.val_dataset(256):
        images.append(np.asarray(preprocess.eval_images(x, info["variant"])))
        labels.append(np.asarray(y))
    images, labels = np.concatenate(images), np.concatenate(labels)
    if max_images:
        images, labels = images[:max_images], labels[:max_images]
    keras_pred = np.concatenate([np.asarray(model(images[i:i + 256], training=False)).argmax(-1)
                                 for i in range(0, len(images), 256)])
    records = [{"artifact": "keras (best weights)", "top1": float(np.mean(keras_pred == labels)),
                "size_mib": None, "agreement": None}]
    reference = None
    for path in artifacts:
        classifier = TFLiteClassifier(path)
        pred = np.array([classifier.run(np.repeat(images[i:i + 1], classifier.batch, 0))[0].argmax()
                         for i in range(len(images))])
        reference = pred if reference is None else reference
        records.append({"artifact": os.path.basename(path), "top1": float(np.mean(pred == labels)),
                        "size_mib": os.path.getsize(path) / 2**20,
                        "agreement": float(np.mean(pred == reference))})
    print(f"{len(labels)} val images")
    for r in records:
        size = "" if r["size_mib"] is None else f"  {r['size_mib']:.2f} MiB"
        agree = "" if r["agreement"] is None else f"  top-1 agreement with {os.path.basename(artifacts[0])}: {r['agreement']:.4f}"
        print(f"{r['artifact']:45s} top1 {r['top1']:.4f}{size}{agree}")
    return records


FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) < 2:
        raise app.UsageError("Give one or more .tflite files.")
    evaluate_artifacts(FLAGS.model_dir, argv[1:], FLAGS.max_images)


if __name__ == "__main__":
    flags.DEFINE_string("model_dir", None, "The training run.", required=True)
    flags.DEFINE_integer("max_images", None, "Evaluate on the first N val images only.")
    app.run(main)
