"""Top-1 of exported .tflite files in MediaPipe Tasks' ImageClassifier against the SavedModel.

    python bench/mediapipe_accuracy.py --saved_model=EXPORT/alexnet_cifar/1 \
        --images=DATA/val [--max_images=N] A.tflite [B.tflite ...]

IMAGES holds one folder per class, named as the model's classes. Each file goes,
as an app would send it, to the SavedModel's `serving_bytes` signature (decode,
resize the shorter side to the stored size, centre crops) and to ImageClassifier
(MediaPipe decodes the file and resizes the whole image to the model's input;
`--decoder=tensorflow` hands it the pixels TensorFlow decodes instead, to separate
the two JPEG decoders from the model). Prints the accuracy of each and the top-1
agreement of each .tflite with `serving_bytes`.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from absl import app, flags, logging

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def labelled_files(folder: str, max_images: int | None = None) -> tuple[list[str], list[str]]:
    """(paths, class names) of the images under folder/<class>/, sorted by class then name."""
    paths, names = [], []
    for name in sorted(os.listdir(folder)):
        sub = os.path.join(folder, name)
        if os.path.isdir(sub):
            for f in sorted(os.listdir(sub)):
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(sub, f))
                    names.append(name)
    if max_images:  # a spread over the classes, not the first class only
        keep = np.linspace(0, len(paths) - 1, max_images).round().astype(int)
        paths, names = [paths[i] for i in keep], [names[i] for i in keep]
    return paths, names


def saved_model_top1(saved_model: str, paths: list[str], batch: int = 128) -> list[str]:
    """The top class name of each file from the SavedModel's `serving_bytes` signature."""
    import tensorflow as tf

    serve = tf.saved_model.load(saved_model).signatures["serving_bytes"]
    names = []
    for i in range(0, len(paths), batch):
        data = [open(p, "rb").read() for p in paths[i:i + batch]]
        out = serve(image_bytes=tf.constant(data))
        names.extend(n.decode() for n in out["class_names"].numpy())
    return names


def mediapipe_top1(tflite: str, paths: list[str], decoder: str = "mediapipe") -> list[str]:
    """The top category name of each file from MediaPipe's ImageClassifier.

    Args:
        tflite: the .tflite file.
        paths: image files.
        decoder: "mediapipe" (`mp.Image.create_from_file`, as an app would) or
            "tensorflow" (the pixels `serving_bytes` decodes, `tf.io.decode_image`).
    """
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.core.base_options import BaseOptions

    def image(path):
        if decoder == "mediapipe":
            return mp.Image.create_from_file(path)
        import tensorflow as tf
        pixels = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(pixels.numpy()))

    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=tflite),
                                            running_mode=vision.RunningMode.IMAGE, max_results=1)
    with vision.ImageClassifier.create_from_options(options) as classifier:
        return [classifier.classify(image(p)).classifications[0].categories[0].category_name
                for p in paths]


def compare(saved_model: str, images: str, artifacts: list[str], max_images: int | None = None,
            decoder: str = "mediapipe") -> list[dict]:
    """Accuracy of `serving_bytes` and of each artifact in ImageClassifier, and their agreement."""
    paths, truth = labelled_files(images, max_images)
    reference = saved_model_top1(saved_model, paths)
    records = [{"artifact": "SavedModel serving_bytes", "top1": float(np.mean(
        np.array(reference) == truth)), "agreement": None, "bytes": None}]
    for path in artifacts:
        try:
            pred = mediapipe_top1(path, paths, decoder)
        except (ValueError, RuntimeError) as e:
            records.append({"artifact": os.path.basename(path), "refused": str(e).splitlines()[0],
                            "bytes": os.path.getsize(path)})
            continue
        records.append({"artifact": os.path.basename(path), "bytes": os.path.getsize(path),
                        "top1": float(np.mean(np.array(pred) == truth)),
                        "agreement": float(np.mean(np.array(pred) == reference))})
    print(f"{len(paths)} images from {images}, decoded for MediaPipe by {decoder}")
    for r in records:
        if "refused" in r:
            print(f"{r['artifact']:48s} refused by ImageClassifier: {r['refused']}")
            continue
        size = "" if r["bytes"] is None else f"  {r['bytes']:,} bytes"
        agree = ("" if r["agreement"] is None
                 else f"  top-1 agreement with serving_bytes {r['agreement']:.4f}")
        print(f"{r['artifact']:48s} top1 {r['top1']:.4f}{agree}{size}")
    return records


FLAGS = flags.FLAGS


def main(argv):
    logging.set_verbosity(logging.WARNING)
    if len(argv) < 2:
        raise app.UsageError("Give one or more .tflite files.")
    compare(FLAGS.saved_model, FLAGS.images, argv[1:], FLAGS.max_images, FLAGS.decoder)


if __name__ == "__main__":
    flags.DEFINE_string("saved_model", None, "The SavedModel version folder.", required=True)
    flags.DEFINE_string("images", None, "A folder of <class>/ image folders.", required=True)
    flags.DEFINE_integer("max_images", None, "Use N images spread over the folder.")
    flags.DEFINE_enum("decoder", "mediapipe", ["mediapipe", "tensorflow"],
                      "Who decodes the files for ImageClassifier.")
    app.run(main)
