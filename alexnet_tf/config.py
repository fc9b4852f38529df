"""Every setting written once: the closed lists of choices, the train settings and the recipes.

Imports no TensorFlow, so that `main.py` can define its flags from `TrainConfig` before
TensorFlow loads. Each `TrainConfig` field carries its flag's help, bounds and choices;
the library modules import their lists of allowed values from here.
"""

from __future__ import annotations

import dataclasses
import typing

# Closed lists of choices.
VARIANT_NAMES = ("paper", "owt", "cifar")           # alexnet_tf.model.VARIANTS, in this order
DATASETS = ("cifar10", "folder", "tfrecord", "synthetic")
INITS = ("paper", "he", "glorot")
LRN_IMPLEMENTATIONS = ("fused", "builtin", "decomposed")   # how an LRN layer computes
TFLITE_LRN_FORMS = ("builtin", "decomposed")        # the LRN forms a TFLite file can hold
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
JIT_CHOICES = ("auto", "true", "false")
LR_SCHEDULES = ("plateau", "step", "cosine")
# The layers that hold weights, in order: the names `trainable_from` takes.
WEIGHT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
EXPORT_FORMATS = ("saved_model", "tflite", "keras", "all")
CHECKPOINTS = ("best", "latest")                    # the weights files of a run
SPLITS = ("train", "val")
TTA_MODES = ("none", "10crop")
BENCHMARKS = ("train", "input", "inference", "all", "profile")
ONEDNN_CHOICES = ("auto", "on", "off")
POOLINGS = ("avg", "max")                          # AlexNet(include_top=False, pooling=)
CLASSIFIER_ACTIVATIONS = ("softmax",)               # AlexNet(classifier_activation=), or None
PRETRAINED_WEIGHTS = ("imagenet",)                  # named weights of AlexNet(weights=) and convert
FEATURE_LAYERS = ("pool5", "fc6", "fc7")            # what `features` extracts (pool5 flattened)
VISUALIZATIONS = ("filters", "neighbors")           # what `visualize --show` draws


# Named recipes: the settings that differ from TrainConfig's defaults.
_CIFAR10 = {"model": "cifar", "dataset": "cifar10", "epochs": 24, "batch_size": 128,
            "learning_rate": 0.04, "lr_schedule": "cosine", "warmup_epochs": 2.0,
            "label_smoothing": 0.1, "ema_decay": 0.998, "precision": "auto"}
RECIPES = {
    # §5: SGD momentum 0.9, batch 128, lr 0.01 divided by 10 on plateaus, decay 0.0005,
    # dropout 0.5, PCA colour jitter; about 90 passes over ImageNet.
    "paper": {"model": "paper", "dataset": "folder", "epochs": 90, "batch_size": 128,
              "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
              "lr_schedule": "plateau", "dropout": 0.5, "pca_std": 0.1},
    # The measured 24-epoch CIFAR-10 recipe (docs/results.md).
    "cifar10": _CIFAR10,
    # The best measured run: 100 epochs with Cutout (88.50% val top-1, docs/results.md).
    "cifar10-long": {**_CIFAR10, "epochs": 100, "weight_decay": 1e-3, "cutout": 12,
                     "checkpoint_every_steps": 100},
    # Fine-tuning a pretrained run (--init_from) on an image folder: fc6-fc8 trained.
    "finetune": {"dataset": "folder", "trainable_from": "fc6", "epochs": 10,
                 "learning_rate": 0.001, "lr_schedule": "cosine"},
}
RECIPE_HELP = {
    "paper": "the paper's §5 recipe for the 227x227 model on an image folder (--data_dir)",
    "cifar10": "the measured 24-epoch CIFAR-10 recipe (85% val top-1 in under an hour on 2 cores)",
    "cifar10-long": "the best measured CIFAR-10 run: 100 epochs with Cutout (88.5% val top-1)",
    "finetune": "fine-tune a pretrained run (--init_from=RUN) on an image folder (--data_dir)",
}
# What a recipe needs from the command line.
RECIPE_NEEDS = {"paper": ("data_dir",), "finetune": ("init_from", "data_dir")}



def setting(default, help: str, *, choices: tuple | None = None, lower=None, upper=None,
            flag: str | None = None, cli: bool = True):
    """A `TrainConfig` field with what its command-line flag needs.

    Args:
        default: the value without a flag or a recipe.
        help: the flag's help text.
        choices: the allowed values of a closed list.
        lower, upper: inclusive bounds of a number.
        flag: the flag's name where it differs from the field's.
        cli: False for a field that is no flag (set from Python only).
    """
    metadata = {"help": help, "choices": choices, "lower": lower, "upper": upper, "flag": flag,
                "cli": cli}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """All the settings of a training run: the flags of `python main.py train`.

    `model` may be None with `init_from`: the variant of the run it starts from.
    """
    model: str | None = setting("cifar", "AlexNet variant.", choices=VARIANT_NAMES)
    dataset: str = setting("cifar10", "Data source (see docs/data.md).", choices=DATASETS)
    data_dir: str | None = setting(None, "Where the dataset lives (folder tree, TFRecord shards, "
                                   "or CIFAR-10 python batches).")
    model_dir: str | None = setting(None, "The run's folder: checkpoints, logs, summary "
                                    "(default: runs/<model>-<dataset>).")
    epochs: int = setting(30, "Training epochs.", lower=1)
    batch_size: int = setting(128, "Global batch size.", lower=1)
    steps_per_epoch: int = setting(0, "Cap on the steps of an epoch (0: a full pass). For smoke "
                                   "runs.", lower=0)
    seed: int = setting(0, "Seed of initialisation, shuffling and augmentation.")
    num_classes: int = setting(10, "Class count of --dataset=synthetic.", lower=2)
    synthetic_examples: int = setting(1024, "Training examples of --dataset=synthetic.", lower=1)
    init: str | None = setting(None, "Weight init (default: the variant's).", choices=INITS)
    groups: int = setting(1, "2 for the paper's two-tower connectivity.", lower=1, upper=2)
    cache: bool = setting(False, "Keep decoded images in memory (datasets that fit).")
    strict: bool = setting(False, "Stop before training when any image file is unreadable.")
    learning_rate: float = setting(0.01, "Initial learning rate (paper: 0.01).", lower=0.0)
    momentum: float = setting(0.9, "SGD momentum (paper: 0.9).", lower=0.0)
    weight_decay: float = setting(5e-4, "The paper's weight decay, inside the momentum update.",
                                  lower=0.0)
    label_smoothing: float = setting(0.0, "Label smoothing of the training loss (paper: 0).",
                                     lower=0.0, upper=0.99)
    ema_decay: float = setting(0.0, "Evaluate, save and export an exponential moving average of "
                               "the weights with this decay per step, e.g. 0.998 (0: off, the "
                               "paper's weights).", lower=0.0, upper=0.99999)
    lr_schedule: str = setting("plateau", "plateau: divide by 10 when val top-1 stops improving "
                               "(paper); step: /10 after each third; cosine: anneal to 0.",
                               choices=LR_SCHEDULES)
    plateau_patience: int = setting(2, "plateau: epochs without a better val top-1 before the "
                                    "rate is divided by 10.", lower=1)
    max_lr_drops: int = setting(3, "plateau: most divisions of the rate (paper: 3).", lower=0)
    warmup_epochs: float = setting(0.0, "Linear warm-up (step and cosine).", lower=0.0)
    precision: str = setting("float32", "Compute precision; auto: bfloat16 on CPUs with bfloat16 "
                             "units and on GPUs of compute capability 8.0+, float16 on 7.x, else "
                             "float32.", choices=PRECISIONS)
    jit_compile: str = setting("auto", "XLA for the train step; auto: on for GPUs, off on CPUs "
                               "(measured slower there).", choices=JIT_CHOICES)
    deterministic: bool = setting(False, "Op determinism: bit-identical reruns.")
    strategy: str = setting("auto", "tf.distribute strategy.", choices=STRATEGIES)
    checkpoint_every_steps: int = setting(0, "Also checkpoint every N steps (0: per epoch only).",
                                          lower=0)
    keep_checkpoints: int = setting(3, "Checkpoints kept besides the best weights.", lower=1)
    flip: bool = setting(True, "Random horizontal flips.")
    noise_std: float = setting(0.0, "Std of additive Gaussian pixel noise (0-255 scale).",
                               lower=0.0)
    pca_std: float = setting(0.1, "Std of the paper's PCA colour jitter alphas (0: off).",
                             lower=0.0)
    cutout: int = setting(0, "Side of a square set to the image's mean colour at a random place "
                          "in each training image (0: off; not in the paper).", lower=0)
    lrn_implementation: str = setting("fused", "How the LRN layers compute during training "
                                      "(same formula; see docs/model.md).",
                                      choices=LRN_IMPLEMENTATIONS, flag="lrn_impl")
    augment: bool = setting(True, "Training augmentation (off: the evaluation centre crop).")
    dropout: float = setting(0.5, "Rate of dropout6 and dropout7 (paper: 0.5).", lower=0.0,
                             upper=0.95)
    tensorboard_pictures: bool = setting(True, "Each epoch, TensorBoard gets 16 training images "
                                         "as the model sees them (after the augmentation) and a "
                                         "histogram of every weight.")
    cpu_devices: int = setting(0, "Split the CPU into N logical devices, e.g. to try "
                               "--strategy=mirrored without GPUs.", lower=0)
    init_from: str | None = setting(None, "Start from the weights of a run folder (a trained or "
                                    "converted run: its best weights) or of a .weights.h5 file "
                                    "in one; fc8 is new when the classes differ. The variant "
                                    "comes from that run.")
    trainable_from: str | None = setting(None, "Freeze every layer before this one (default: "
                                         "train all).", choices=WEIGHT_LAYERS)
    recipe: str | None = setting(None, "A named recipe of settings (python main.py recipes); "
                                 "flags given beside it override its values.",
                                 choices=tuple(RECIPES))
    verbose: int = setting(1, "Progress output (0: none).", cli=False)


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a `TrainConfig` field appears on the command line."""
    field: str
    name: str
    kind: type
    default: object
    help: str
    choices: tuple | None
    lower: object
    upper: object


def train_flags() -> list[Flag]:
    """The command-line flags of the train settings, in field order."""
    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        kind = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
        out.append(Flag(f.name, meta["flag"] or f.name, kind, f.default, meta["help"],
                        meta["choices"], meta["lower"], meta["upper"]))
    return out


def recipe_config(recipe: str | None = None, **overrides) -> TrainConfig:
    """The `TrainConfig` of a named recipe (None: the defaults), with `overrides` on top.

    Raises:
        ValueError: on an unknown recipe or setting.
    """
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"Unknown recipe; expected one of {tuple(RECIPES)}. Received: recipe={recipe!r}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"Unknown train settings: {', '.join(unknown)}.")
    return TrainConfig(**{**RECIPES.get(recipe, {}), **overrides, "recipe": recipe})
