"""Command-line entry point: `python main.py COMMAND [--flags]`.

Commands: train, evaluate, export, predict, prepare, benchmark.
Flags are parsed here and passed on as explicit arguments; nothing below
this file reads FLAGS.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS

# Shared by several commands.
flags.DEFINE_enum("model", "cifar", ["paper", "owt", "cifar"], "AlexNet variant.")
flags.DEFINE_enum("dataset", "cifar10", ["cifar10", "folder", "tfrecord", "synthetic"],
                  "Data source (see README).")
flags.DEFINE_string("data_dir", None, "Where the dataset lives (folder tree, TFRecord shards, "
                    "or CIFAR-10 python batches).")
flags.DEFINE_string("model_dir", None, "A run's folder: checkpoints, logs, summary. "
                    "Default for train: runs/<model>-<dataset>.")
flags.DEFINE_integer("epochs", 30, "Training epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", 128, "Global batch size.", lower_bound=1)
flags.DEFINE_integer("steps_per_epoch", 0, "Cap on the steps of an epoch (0: a full pass). "
                     "For smoke runs.", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed of initialisation, shuffling and augmentation.")
flags.DEFINE_integer("num_classes", 10, "Class count of --dataset=synthetic.", lower_bound=2)
flags.DEFINE_integer("synthetic_examples", 1024, "Training examples of --dataset=synthetic.",
                     lower_bound=1)
flags.DEFINE_enum("init", None, ["paper", "he", "glorot"], "Weight init (default: the variant's).")
flags.DEFINE_integer("groups", 1, "2 for the paper's two-tower connectivity.", lower_bound=1, upper_bound=2)
flags.DEFINE_boolean("cache", False, "Keep decoded images in memory (datasets that fit).")
flags.DEFINE_boolean("strict", False, "Stop before training when any image file is unreadable.")

# train
flags.DEFINE_float("learning_rate", 0.01, "Initial learning rate (paper: 0.01).", lower_bound=0.0)
flags.DEFINE_float("momentum", 0.9, "SGD momentum (paper: 0.9).", lower_bound=0.0)
flags.DEFINE_float("weight_decay", 5e-4, "Paper weight decay inside the momentum update.",
                   lower_bound=0.0)
flags.DEFINE_enum("lr_schedule", "plateau", ["plateau", "step", "cosine"],
                  "plateau: divide by 10 when val error stops improving (paper, at most 3 times).")
flags.DEFINE_float("warmup_epochs", 0.0, "Linear warm-up (step and cosine).", lower_bound=0.0)
flags.DEFINE_enum("precision", "float32", ["float32", "mixed_float16", "mixed_bfloat16"],
                  "Compute precision.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"],
                  "XLA for the train step; auto: on for GPUs, off on CPUs (measured slower there).")
flags.DEFINE_boolean("deterministic", False, "Op determinism: bit-identical reruns.")
flags.DEFINE_enum("strategy", "auto", ["auto", "one_device", "mirrored", "multi_worker", "tpu"],
                  "tf.distribute strategy.")
flags.DEFINE_integer("checkpoint_every_steps", 0, "Also checkpoint every N steps (0: per epoch only).",
                     lower_bound=0)
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept besides the best.", lower_bound=1)
flags.DEFINE_boolean("flip", True, "Random horizontal flips.")
flags.DEFINE_float("noise_std", 0.0, "Std of additive Gaussian pixel noise (0-255 scale).",
                   lower_bound=0.0)
flags.DEFINE_float("pca_std", 0.1, "Std of the paper's PCA colour jitter alphas (0: off).",
                   lower_bound=0.0)

# evaluate
flags.DEFINE_enum("tta", "none", ["none", "10crop"], "Test-time augmentation.")
flags.DEFINE_enum("split", "val", ["train", "val"], "Split to evaluate.")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which weights of the run.")

# export
flags.DEFINE_enum("format", "saved_model", ["saved_model", "tflite", "all"], "Export format.")
flags.DEFINE_string("export_dir", None, "Export destination (default: MODEL_DIR/export).")
flags.DEFINE_integer("version", None, "SavedModel version (default: next free).", lower_bound=1)
flags.DEFINE_enum("quantize", "none", ["none", "float16", "dynamic", "int8"], "TFLite quantization.")
flags.DEFINE_enum("lrn", "builtin", ["builtin", "decomposed"], "TFLite form of the LRN layers.")
flags.DEFINE_integer("tflite_batch", 1, "Static batch of the TFLite model.", lower_bound=1)
flags.DEFINE_integer("calibration_steps", 100, "int8 calibration images.", lower_bound=1)

# predict
flags.DEFINE_string("artifact", None, "A SavedModel directory or a .tflite file.")

# prepare
flags.DEFINE_string("output_dir", None, "Where `prepare` writes TFRecord shards.")
flags.DEFINE_integer("shards", 16, "TFRecord shards per split.", lower_bound=1)

# benchmark
flags.DEFINE_enum("what", "all", ["train", "input", "inference", "all"], "What to benchmark.")
flags.DEFINE_string("output", None, "JSON file for benchmark records.")


def _no_args(argv):
    if len(argv) > 2:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[2:])}")


def train(argv):
    _no_args(argv)
    from alexnet_tf import training
    model_dir = FLAGS.model_dir or os.path.join("runs", f"{FLAGS.model}-{FLAGS.dataset}")
    config = training.TrainConfig(
        model=FLAGS.model, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir, model_dir=model_dir,
        epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, steps_per_epoch=FLAGS.steps_per_epoch,
        seed=FLAGS.seed, num_classes=FLAGS.num_classes, synthetic_examples=FLAGS.synthetic_examples,
        init=FLAGS.init, groups=FLAGS.groups, cache=FLAGS.cache, strict=FLAGS.strict,
        learning_rate=FLAGS.learning_rate, momentum=FLAGS.momentum,
        weight_decay=FLAGS.weight_decay, lr_schedule=FLAGS.lr_schedule,
        warmup_epochs=FLAGS.warmup_epochs, precision=FLAGS.precision,
        jit_compile=FLAGS.jit_compile, deterministic=FLAGS.deterministic,
        strategy=FLAGS.strategy, checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        keep_checkpoints=FLAGS.keep_checkpoints, flip=FLAGS.flip, noise_std=FLAGS.noise_std,
        pca_std=FLAGS.pca_std)
    training.train(config)


def _not_yet(name):
    def command(argv):
        raise app.UsageError(f"`{name}` is not implemented yet.")
    return command


evaluate = _not_yet("evaluate")
export = _not_yet("export")
predict = _not_yet("predict")
prepare = _not_yet("prepare")
benchmark = _not_yet("benchmark")

COMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "export": export,
    "predict": predict,
    "prepare": prepare,
    "benchmark": benchmark,
}


def main(argv):
    if len(argv) < 2:
        raise app.UsageError(f"Missing command; expected one of: {', '.join(COMMANDS)}")
    command = COMMANDS.get(argv[1])
    if command is None:
        raise app.UsageError(f"Unknown command {argv[1]!r}; expected one of: {', '.join(COMMANDS)}")
    try:
        command(argv)
    except (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError,
            PermissionError) as e:
        # User-facing errors from the library: one line, no traceback.
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
