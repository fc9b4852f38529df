"""Command-line entry point: `python main.py COMMAND [--flags]`.

Commands: train, recipes, evaluate, export, predict, prepare, benchmark, convert, features,
visualize.
Flags are parsed here and passed on as explicit arguments; nothing below
this file reads FLAGS.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from alexnet_tf import config as cfg, storage, tf_startup  # noqa: E402  (no TensorFlow)

FLAGS = flags.FLAGS


def _define_train_flags() -> None:
    """One flag per `TrainConfig` field, with the field's default, help, bounds and choices."""
    for f in cfg.train_flags():
        if f.choices:
            flags.DEFINE_enum(f.name, f.default, list(f.choices), f.help)
        elif f.kind is bool:
            flags.DEFINE_boolean(f.name, f.default, f.help)
        elif f.kind is int:
            flags.DEFINE_integer(f.name, f.default, f.help, lower_bound=f.lower, upper_bound=f.upper)
        elif f.kind is float:
            flags.DEFINE_float(f.name, f.default, f.help, lower_bound=f.lower, upper_bound=f.upper)
        else:
            flags.DEFINE_string(f.name, f.default, f.help)


_define_train_flags()
flags.DEFINE_enum("onednn", "auto", list(cfg.ONEDNN_CHOICES),
                  "TensorFlow's oneDNN CPU kernels; auto: TF_ENABLE_ONEDNN_OPTS if set, else on for "
                  "x86 CPUs (TensorFlow leaves them off on CPUs without VNNI or AMX, where float32 "
                  "training is slower without them), TensorFlow's default elsewhere.")

# convert
flags.DEFINE_string("weights", None, "A torchvision AlexNet state dict (.pth), e.g. "
                    "alexnet-owt-7be5be79.pth; either PyTorch file format. imagenet: download "
                    "torchvision's file into Keras' cache (or $ALEXNET_TF_WEIGHTS_MIRROR) first.")

# evaluate
flags.DEFINE_enum("tta", "none", list(cfg.TTA_MODES), "Test-time augmentation.")
flags.DEFINE_enum("split", "val", list(cfg.SPLITS), "Split to evaluate.")
flags.DEFINE_enum("checkpoint", "best", list(cfg.CHECKPOINTS), "Which weights of the run.")

# export
flags.DEFINE_enum("format", "saved_model", list(cfg.EXPORT_FORMATS), "Export format.")
flags.DEFINE_string("export_dir", None, "Export destination (default: MODEL_DIR/export).")
flags.DEFINE_integer("version", None, "SavedModel version (default: next free).", lower_bound=1)
flags.DEFINE_enum("quantize", "none", list(cfg.QUANTIZATIONS), "TFLite quantization.")
flags.DEFINE_enum("lrn", "builtin", list(cfg.TFLITE_LRN_FORMS), "TFLite form of the LRN layers.")
flags.DEFINE_integer("tflite_batch", 1, "Static batch of the TFLite model.", lower_bound=1)
flags.DEFINE_integer("calibration_steps", 100, "int8 calibration images.", lower_bound=1)
flags.DEFINE_boolean("overwrite", False, "Export again what is already exported (TFLite files are "
                     "replaced; a SavedModel gets a new version, never replacing one).")
flags.DEFINE_string("model_name", None, "Served model name / TFLite file prefix "
                    "(default: alexnet_<variant>).")

# predict
flags.DEFINE_string("artifact", None, "A SavedModel directory, a .tflite file, or a training run's "
                    "folder (its best weights; needed by --explain).")
flags.DEFINE_integer("top_k", 5, "Classes printed per file.", lower_bound=1)
flags.DEFINE_string("explain", None, "A folder for Grad-CAM pictures of each file's top class at "
                    "conv5 (<image stem>_gradcam.png); needs --artifact=MODEL_DIR, a run folder.")

# prepare
flags.DEFINE_string("output_dir", None, "Where `prepare` writes TFRecord shards.")
flags.DEFINE_integer("shards", 16, "TFRecord shards per split.", lower_bound=1)

# benchmark
flags.DEFINE_enum("what", "all", list(cfg.BENCHMARKS),
                  "What to benchmark; profile: op-level times of the train step (not in all).")
flags.DEFINE_string("output", None, "The file written: benchmark's JSON records, features' .npz, "
                    "visualize's PNG.")
flags.DEFINE_integer("reps", 5, "Timed repetitions per benchmark figure.", lower_bound=1)
flags.DEFINE_integer("threads", 0, "TF intra-op threads for benchmarks (0: all cores).", lower_bound=0)

# features, visualize
flags.DEFINE_enum("layer", "fc7", list(cfg.FEATURE_LAYERS), "The layer whose activations `features` "
                  "writes (pool5 flattened; fc6, fc7 after their ReLU).")
flags.DEFINE_enum("show", "filters", list(cfg.VISUALIZATIONS), "What `visualize` draws: filters "
                  "(conv1's kernels, the paper's Fig. 3) or neighbors (the --data_dir images nearest "
                  "to --query by fc7 distance, Fig. 4).")
flags.DEFINE_string("query", None, "neighbors: an image file or a folder of query images.")
flags.DEFINE_integer("top", 6, "neighbors: gallery images shown per query.", lower_bound=1)


def _no_args(argv):
    if len(argv) > 2:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[2:])}")


def train(argv):
    _no_args(argv)
    config = train_config()
    import_tensorflow_quietly()
    from alexnet_tf import training
    training.train(config)


def train_config() -> cfg.TrainConfig:
    """The train settings: --recipe's values (or the defaults) with the flags given on top."""
    given = {f.field: FLAGS[f.name].value for f in cfg.train_flags()
             if FLAGS[f.name].present and f.field != "recipe"}
    recipe = FLAGS.recipe
    for needed in cfg.RECIPE_NEEDS.get(recipe, ()):
        if needed not in given:
            raise app.UsageError(f"--recipe={recipe} needs --{needed}.")
    if given.get("init_from") and "model" not in given and "model" not in cfg.RECIPES.get(recipe, {}):
        given["model"] = None  # the variant of the run it starts from
    return cfg.recipe_config(recipe, **given)


def recipes(argv):
    """Lists the named train recipes and the settings each one sets."""
    _no_args(argv)
    for name, values in cfg.RECIPES.items():
        print(f"{name}: {cfg.RECIPE_HELP[name]}")
        print("  " + " ".join(f"--{_flag_name(k)}={v}" for k, v in values.items()))


def _flag_name(field: str) -> str:
    return next(f.name for f in cfg.train_flags() if f.field == field)


def evaluate(argv):
    _no_args(argv)
    if not FLAGS.model_dir:
        raise app.UsageError("evaluate needs --model_dir=RUN (a training run's folder).")
    import_tensorflow_quietly()
    from alexnet_tf import rundir
    from alexnet_tf.evaluation import evaluate_run
    _note_training(FLAGS.model_dir)
    dataset = FLAGS.dataset if FLAGS["dataset"].present else None
    result = evaluate_run(FLAGS.model_dir, checkpoint=FLAGS.checkpoint, tta=FLAGS.tta, split=FLAGS.split,
                          dataset=dataset, data_dir=FLAGS.data_dir, batch_size=FLAGS.batch_size)
    print(f"{result['split']} ({result['count']} images, {result['checkpoint']} weights, tta={result['tta']}): "
          f"top1 {result['top1']:.4f}  top5 {result['top5']:.4f}  loss {result['loss']:.4f}")
    for name, acc in zip(result["class_names"], result["per_class"]):
        print(f"  {name:20s} {'-' if acc is None else f'{acc:.4f}'}")
    print(f"Wrote {os.path.join(FLAGS.model_dir, rundir.EVAL)} and {rundir.CONFUSION}")


def export(argv):
    _no_args(argv)
    if not FLAGS.model_dir:
        raise app.UsageError("export needs --model_dir=RUN, a training run's folder.")
    tflite_only = ("quantize", "lrn", "tflite_batch", "calibration_steps")
    if FLAGS.format in ("saved_model", "keras") and any(FLAGS[f].present for f in tflite_only):
        raise app.UsageError(f"--{'/--'.join(tflite_only)} apply to --format=tflite or all.")
    if FLAGS.format in ("tflite", "keras") and FLAGS["version"].present:
        raise app.UsageError("--version applies to --format=saved_model or all.")
    import_tensorflow_quietly()
    from export import artifacts
    _note_training(FLAGS.model_dir)
    quantize = FLAGS.quantize if FLAGS["quantize"].present else None
    artifacts.export_run(FLAGS.model_dir, FLAGS.export_dir, fmt=FLAGS.format,
                         checkpoint=FLAGS.checkpoint, version=FLAGS.version,
                         model_name=FLAGS.model_name, quantize=quantize, lrn=FLAGS.lrn,
                         batch=FLAGS.tflite_batch, calibration=_calibration(quantize),
                         calibration_steps=FLAGS.calibration_steps, overwrite=FLAGS.overwrite)


def _note_training(model_dir: str) -> None:
    """Says on stderr when the run folder is being trained (its last complete files are read)."""
    from alexnet_tf import rundir
    note = rundir.training_note(model_dir)
    if note:
        print(note, file=sys.stderr)


def _calibration(quantize: str | None):
    """int8 calibration images, opened (and checked) before anything is written."""
    from export import artifacts
    if FLAGS.format in ("saved_model", "keras") or "int8" not in artifacts.tflite_forms(FLAGS.format, quantize):
        return None
    from export.tflite import calibration_batches
    dataset = FLAGS.dataset if FLAGS["dataset"].present else None
    data_dir = FLAGS.data_dir if FLAGS["data_dir"].present else None
    return calibration_batches(FLAGS.model_dir, dataset, data_dir, max_images=FLAGS.calibration_steps)


def predict(argv):
    if not FLAGS.artifact:
        raise app.UsageError("predict needs --artifact=PATH (a SavedModel folder, a .tflite file "
                             "or a run folder).")
    if len(argv) < 3:
        raise app.UsageError("predict needs image files or folders: "
                             "python main.py predict --artifact=PATH FILE_OR_DIR...")
    import_tensorflow_quietly()
    from export.predict import predict_files, print_predictions
    results, failures = predict_files(FLAGS.artifact, argv[2:], top_k=FLAGS.top_k,
                                      explain=FLAGS.explain)
    print_predictions(results, failures)
    if not results and not failures:
        print(f"Error: no files found in {' '.join(argv[2:])}", file=sys.stderr)
    if failures or not results:
        sys.exit(1)


def prepare(argv):
    """Writes a folder tree (--data_dir) as TFRecord shards (--output_dir, --shards)."""
    _no_args(argv)
    if not FLAGS.data_dir:
        raise app.UsageError("prepare needs --data_dir: a folder with train/<class>/* and "
                             "val/<class>/* images.")
    if not FLAGS.output_dir:
        raise app.UsageError("prepare needs --output_dir: where the TFRecord shards go.")
    import_tensorflow_quietly()
    from data_pipeline import tfrecord
    metadata = tfrecord.write_shards(FLAGS.data_dir, FLAGS.output_dir, FLAGS.shards,
                                     strict=FLAGS.strict)
    splits = ", ".join(f"{split}: {info['num_examples']} images in {len(info['shards'])} shards"
                       for split, info in metadata["splits"].items())
    print(f"Wrote {FLAGS.output_dir} ({len(metadata['class_names'])} classes; {splits}; "
          f"{len(metadata['skipped'])} unreadable files skipped).")


def benchmark(argv):
    _no_args(argv)
    import_tensorflow_quietly()
    from bench import run
    variants = (FLAGS.model,) if FLAGS["model"].present else run.VARIANTS
    # Without --precision: float32 and what `auto` picks here (train's default is float32).
    precision = FLAGS.precision if FLAGS["precision"].present else "auto"
    run.run(FLAGS.what, variants, data_dir=FLAGS.data_dir, reps=FLAGS.reps, batch=FLAGS.batch_size,
            intra_threads=FLAGS.threads, precision=precision, output=FLAGS.output)


def convert(argv):
    """Writes a run folder (--model_dir) from torchvision's AlexNet weights (--weights)."""
    _no_args(argv)
    if not FLAGS.weights:
        raise app.UsageError("convert needs --weights=FILE, a torchvision AlexNet state dict "
                             "such as alexnet-owt-7be5be79.pth, or --weights=imagenet.")
    if not FLAGS.model_dir:
        raise app.UsageError("convert needs --model_dir=RUN, the run folder to write.")
    import_tensorflow_quietly()
    from alexnet_tf.pretrained import convert_torchvision
    weights = FLAGS.weights
    if weights in cfg.PRETRAINED_WEIGHTS:
        from alexnet_tf import imagenet_weights
        weights = imagenet_weights.fetch()
    info = convert_torchvision(weights, FLAGS.model_dir)
    print(f"Wrote {FLAGS.model_dir}: variant {info['variant']}, {info['num_classes']} ImageNet "
          f"classes, {info['parameters']:,} parameters (from {weights}).")


def features(argv):
    """Writes a run's --layer vectors of every image under --data_dir to --output (.npz)."""
    _no_args(argv)
    for flag, what in (("model_dir", "a run folder"), ("data_dir", "a folder of images"),
                       ("output", "the .npz file to write")):
        if not FLAGS[flag].value:
            raise app.UsageError(f"features needs --{flag}: {what}.")
    import_tensorflow_quietly()
    from alexnet_tf.features import run_features
    _note_training(FLAGS.model_dir)
    result = run_features(FLAGS.model_dir, FLAGS.data_dir, FLAGS.output, layer=FLAGS.layer,
                          batch_size=FLAGS.batch_size, checkpoint=FLAGS.checkpoint)
    count, dim = result.features.shape
    print(f"Wrote {FLAGS.output}: {count} images x {dim} {result.layer} features"
          f"{f', {len(result.skipped)} unreadable files skipped' if result.skipped else ''}.")


def visualize(argv):
    """Draws conv1's kernels (--show=filters) or fc7 nearest neighbours (--show=neighbors)."""
    _no_args(argv)
    if not FLAGS.model_dir:
        raise app.UsageError("visualize needs --model_dir=RUN, a run folder.")
    if not FLAGS.output:
        raise app.UsageError("visualize needs --output=FILE.png.")
    neighbor_flags = ("data_dir", "query", "top", "batch_size")
    if FLAGS.show == "filters" and any(FLAGS[f].present for f in neighbor_flags):
        raise app.UsageError(f"--{'/--'.join(neighbor_flags)} apply to --show=neighbors.")
    if FLAGS.show == "neighbors" and not (FLAGS.data_dir and FLAGS.query):
        raise app.UsageError("--show=neighbors needs --data_dir=GALLERY and --query=IMAGE_OR_DIR.")
    import_tensorflow_quietly()
    from alexnet_tf import visualize as viz
    if FLAGS.show == "filters":
        picture = viz.run_filters(FLAGS.model_dir, FLAGS.output, checkpoint=FLAGS.checkpoint)
        print(f"Wrote {FLAGS.output} ({picture.shape[1]}x{picture.shape[0]}).")
        return
    record = viz.run_neighbors(FLAGS.model_dir, FLAGS.data_dir, FLAGS.query, FLAGS.output,
                               top=FLAGS.top, checkpoint=FLAGS.checkpoint, batch_size=FLAGS.batch_size)
    print(f"Wrote {FLAGS.output} and {viz.neighbors_json_path(FLAGS.output)} "
          f"({len(record['queries'])} queries).")


COMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "export": export,
    "predict": predict,
    "prepare": prepare,
    "benchmark": benchmark,
    "convert": convert,
    "recipes": recipes,
    "features": features,
    "visualize": visualize,
}


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with --onednn applied and its start-up log lines filtered."""
    tf_startup.import_tensorflow_quietly(FLAGS.onednn)


def main(argv):
    try:
        _dispatch(argv)
    except app.UsageError as e:
        # One line, not absl's usage text with every flag of every command.
        command = argv[1] if len(argv) > 1 and argv[1] in COMMANDS else "COMMAND"
        _exit_with_error(f"{e} (python main.py {command} --help lists the flags)")


def _dispatch(argv):
    if len(argv) < 2:
        raise app.UsageError(f"Missing command; expected one of: {', '.join(COMMANDS)}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TF's own INFO lines drown the progress bar
    command = COMMANDS.get(argv[1])
    if command is None:
        raise app.UsageError(f"Unknown command {argv[1]!r}; expected one of: {', '.join(COMMANDS)}")
    _check_flags(argv[1])
    try:  # each command checks its flags, then imports TensorFlow (import_tensorflow_quietly)
        command(argv)
    except (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError, PermissionError,
            FloatingPointError, ConnectionError, storage.DiskFullError, storage.FolderBusyError) as e:
        # User-facing errors from the library: one line, no traceback.
        _exit_with_error(str(e))


def _exit_with_error(message: str) -> None:
    print(f"Error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with a bad flag reported in one line (absl adds a hint line)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        words = [a for a in argv[1:] if not a.startswith("-")]
        command = words[0] if words and words[0] in COMMANDS else "COMMAND"
        _exit_with_error(f"{e} (python main.py {command} --help lists the flags)")


# Set how the process runs rather than what a command does: taken by every command.
PROCESS_FLAGS = ("onednn",)
# The flags each command takes; any other flag of this file is a usage error there.
COMMAND_FLAGS = {
    "train": tuple(f.name for f in cfg.train_flags()),
    "evaluate": ("model_dir", "dataset", "data_dir", "batch_size", "tta", "split", "checkpoint"),
    "export": ("model_dir", "format", "export_dir", "version", "quantize", "lrn", "tflite_batch",
               "calibration_steps", "checkpoint", "model_name", "dataset", "data_dir", "overwrite"),
    "predict": ("artifact", "top_k", "explain"),
    "prepare": ("data_dir", "output_dir", "shards", "strict"),
    "benchmark": ("model", "data_dir", "what", "output", "batch_size", "reps", "threads", "precision"),
    "convert": ("weights", "model_dir"),
    "recipes": (),
    "features": ("model_dir", "data_dir", "layer", "output", "batch_size", "checkpoint"),
    "visualize": ("model_dir", "show", "output", "data_dir", "query", "top", "batch_size", "checkpoint"),
}


def command_flags(command: str) -> tuple[str, ...]:
    """The flags (without dashes) that `command` takes."""
    return COMMAND_FLAGS[command] + PROCESS_FLAGS


def _check_flags(command: str) -> None:
    """A flag of this CLI given to a command that does not take it is a usage error."""
    ours = set(PROCESS_FLAGS).union(*COMMAND_FLAGS.values())
    wrong = [name for name in sorted(ours) if FLAGS[name].present and name not in command_flags(command)]
    if wrong:
        listed = ", ".join(f"--{name}" for name in wrong)
        raise app.UsageError(f"{listed} {'does' if len(wrong) == 1 else 'do'} not apply to `{command}`")


EXAMPLES = {
    "train": "python main.py train --recipe=cifar10 --model_dir=runs/cifar10",
    "evaluate": "python main.py evaluate --model_dir=runs/cifar10 --tta=10crop",
    "export": "python main.py export --model_dir=runs/cifar10 --format=all",
    "predict": "python main.py predict --artifact=runs/cifar10/export/alexnet_cifar/1 cat.jpg",
    "prepare": "python main.py prepare --data_dir=images/ --output_dir=shards/ --shards=16",
    "benchmark": "python main.py benchmark --what=train --model=cifar",
    "convert": "python main.py convert --weights=alexnet-owt-7be5be79.pth --model_dir=runs/imagenet",
    "recipes": "python main.py recipes",
    "features": "python main.py features --model_dir=runs/cifar10 --data_dir=images/ --output=fc7.npz",
    "visualize": "python main.py visualize --model_dir=runs/cifar10 --show=filters --output=filters.png",
}


def print_help(command: str | None, recipe: str | None = None) -> None:
    """`python main.py [COMMAND] --help`: the commands, or one command's flags.

    With `train --recipe=NAME --help`, the defaults shown are the recipe's.
    """
    if command not in COMMANDS:
        print(__doc__)
        print("Usage: python main.py COMMAND [--flags]    (python main.py COMMAND --help for its flags)\n")
        for name, example in EXAMPLES.items():
            print(f"  {name:10s} {example}")
        return
    print(f"Usage: python main.py {command} [--flags]\n\nExample: {EXAMPLES[command]}\n")
    values = {}
    if command == "train" and recipe in cfg.RECIPES:
        values = {_flag_name(k): v for k, v in cfg.RECIPES[recipe].items()}
        print(f"Recipe {recipe}: {cfg.RECIPE_HELP[recipe]}; it sets "
              + " ".join(f"--{k}={v}" for k, v in values.items()) + "\n")
    for name in command_flags(command):
        flag = FLAGS[name]
        default = values.get(name, flag.default)
        print(f"  --{name}: {flag.help}\n      (default: {default!r})")


def _help_request(argv: list[str]) -> tuple[str | None, str | None]:
    """The command and the --recipe value of a help request."""
    words = [a for a in argv if not a.startswith("-")]
    recipe = next((a.split("=", 1)[1] for a in argv if a.startswith("--recipe=")), None)
    return (words[0] if words else None), recipe


if __name__ == "__main__":
    if any(a in ("-h", "--help", "-help", "--helpshort") for a in sys.argv[1:]):
        print_help(*_help_request(sys.argv[1:]))
        sys.exit(0)
    app.run(main, flags_parser=parse_flags)
