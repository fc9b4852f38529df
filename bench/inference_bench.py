"""Inference speed of a trained run in every exported form: batch-1 latency and batch-128 throughput
of the Keras model, the SavedModel's serving_default signature and each TFLite artifact.

    python bench/inference_bench.py --model_dir=RUN [--threads=2] [--reps=5] [--output=inference.json]
    python bench/inference_bench.py --variant=paper      # an untrained model: the speed is the same

TFLite runs with the LiteRT interpreter and its default XNNPACK delegate; each
TFLite figure is its own static-batch model (batch 1 and batch 128). Timings
are medians over interleaved repetitions after one warm-up call, input
already in place (host preprocessing and quantization of the input excluded).
`python main.py benchmark --what=inference` calls `measure` per variant.
int8 calibration uses random images: the speed does not depend on it.
"""

from __future__ import annotations

import os
import sys
import tempfile

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from alexnet_tf import rundir  # noqa: E402
from alexnet_tf.model import VARIANTS  # noqa: E402
from bench.common import emit, median, set_threads, table, time_calls  # noqa: E402
from data_pipeline import preprocess  # noqa: E402

TFLITE_FORMS = [("none", "builtin"), ("none", "decomposed"), ("float16", "builtin"),
                ("float16", "decomposed"), ("dynamic", "builtin"), ("dynamic", "decomposed"),
                ("int8", "builtin"), ("int8", "decomposed")]


def _tflite_runner(path: str, threads: int, pixels: np.ndarray):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    x = pixels
    if inp["dtype"] != np.float32:
        scale, zero_point = inp["quantization"]
        x = np.clip(np.round(pixels / scale + zero_point), 0, 255)
    x = x.astype(inp["dtype"])

    def run():
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])
    return run


def measure_run(model_dir: str, *, reps: int = 5, threads: int | None = None,
                export_dir: str | None = None, big_batch: int = 128) -> list[dict]:
    """Times every form of a run's model (its best weights).

    Args:
        model_dir: a training run.
        reps: timed batch-`big_batch` calls per form; batch 1 gets 6x as many.
        threads: LiteRT interpreter threads; defaults to TF's intra-op threads
            (all cores when unset).
        export_dir: where the artifacts go; a temporary folder by default.
        big_batch: the throughput batch.

    Returns:
        One record per (form, batch): `variant`, `form`, `batch`, `latency_ms`
        (median per call), `images_per_second`, `threads`, and for TFLite
        `size_mb`, `xnnpack_partitions`, `cpu_ops` (ops left to LiteRT's kernels).
    """
    from export.saved_model import export_saved_model
    from export.tflite import export_tflite, xnnpack_partitions

    threads = threads or tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
    model, info = rundir.load_trained_model(model_dir)
    variant = info["variant"]
    stored, crop = preprocess.geometry(variant)
    rng = np.random.default_rng(0)
    calibration = [rng.integers(0, 256, (16, stored, stored, 3), dtype=np.uint8)
                   for _ in range(max(1, big_batch // 16))]
    inputs = {b: rng.integers(0, 256, (b, crop, crop, 3), dtype=np.uint8) for b in (1, big_batch)}

    with tempfile.TemporaryDirectory() as tmp:
        export_dir = export_dir or tmp
        runners, meta = {}, {}
        keras_fn = tf.function(lambda x: model(x, training=False))
        serving = tf.saved_model.load(export_saved_model(model_dir, export_dir))
        signature = serving.signatures["serving_default"]
        for b, pixels in inputs.items():
            x = tf.constant(pixels.astype(np.float32))
            u = tf.constant(pixels)
            runners[("keras", b)] = lambda x=x: keras_fn(x).numpy()
            runners[("saved_model", b)] = lambda u=u: signature(images=u)["probabilities"].numpy()
            for quantize, lrn in TFLITE_FORMS:
                if lrn == "decomposed" and not VARIANTS[variant].use_lrn:
                    continue
                path = export_tflite(model_dir, export_dir, quantize=quantize, lrn=lrn, batch=b,
                                     calibration_data=calibration, calibration_steps=big_batch)
                name = f"tflite {quantize if quantize != 'none' else 'float32'} lrn={lrn}"
                runners[(name, b)] = _tflite_runner(path, threads, pixels.astype(np.float32))
                partitions, cpu_ops = xnnpack_partitions(path, threads)
                meta[(name, b)] = {"size_mb": os.path.getsize(path) / 2**20,
                                   "xnnpack_partitions": partitions, "cpu_ops": len(cpu_ops)}

        records = []
        for b, n in ((1, 6 * reps), (big_batch, reps)):
            times = time_calls({k: fn for k, fn in runners.items() if k[1] == b}, n)
            for (name, _), ts in times.items():
                t = median(ts)
                records.append({"what": "inference", "variant": variant, "form": name, "batch": b,
                                "latency_ms": 1e3 * t, "images_per_second": b / t,
                                "threads": threads, **meta.get((name, b), {})})
    return records


def measure(variant: str, reps: int = 5, *, num_classes: int | None = None,
            threads: int | None = None, big_batch: int = 128) -> list[dict]:
    """`measure_run` on an untrained `variant` model: speed does not depend on the weights."""
    from alexnet_tf.model import build_alexnet

    with tempfile.TemporaryDirectory() as tmp:
        model = build_alexnet(variant, num_classes, seed=0)
        rundir.write_run_info(tmp, {"variant": variant, "num_classes": model.output_shape[-1],
                                    "class_names": None, "model_kwargs": {}})
        rundir.save_weights_atomic(model, os.path.join(tmp, rundir.WEIGHTS["best"]))
        return measure_run(tmp, reps=reps, threads=threads, big_batch=big_batch)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    threads = set_threads(FLAGS.threads, 1)
    print(f"{os.cpu_count()} CPU cores visible; TF intra-op threads {threads['intra_op']}, "
          f"inter-op 1; LiteRT num_threads {FLAGS.threads} (XNNPACK); median of "
          f"{6 * FLAGS.reps} batch-1 and {FLAGS.reps} batch-128 calls.")
    if FLAGS.model_dir:
        records = measure_run(FLAGS.model_dir, reps=FLAGS.reps, threads=FLAGS.threads)
    else:
        records = measure(FLAGS.variant, FLAGS.reps, threads=FLAGS.threads)
    print(table(records, ["form", "batch", "latency_ms", "images_per_second", "size_mb",
                          "xnnpack_partitions", "cpu_ops"]))
    emit(records, FLAGS.output)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    flags.DEFINE_string("model_dir", None, "A training run's folder (default: an untrained "
                        "--variant model).")
    flags.DEFINE_enum("variant", "cifar", ["cifar", "owt", "paper"], "Variant without --model_dir.")
    flags.DEFINE_integer("threads", 2, "TF intra-op threads and LiteRT interpreter threads.",
                         lower_bound=1)
    flags.DEFINE_integer("reps", 5, "Timed batch-128 calls per form (batch 1: 6x as many).",
                         lower_bound=1)
    flags.DEFINE_string("output", None, "JSON file for the records.")
    app.run(main)
