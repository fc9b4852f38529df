"""Fine-tuning: the run whose weights a run starts from (`--init_from`), copying them in,
and freezing the layers before `--trainable_from`."""

from __future__ import annotations

import dataclasses
import os

import keras

from alexnet_tf import rundir
from alexnet_tf.config import WEIGHT_LAYERS, TrainConfig


@dataclasses.dataclass(frozen=True)
class InitSource:
    """The run whose weights a fine-tuning run starts from (`--init_from`)."""
    path: str
    weights: str
    variant: str
    num_classes: int
    model_kwargs: dict
    class_names: tuple = ()

    def record(self) -> dict:
        """What run.json keeps of it (a resumed run reads this instead of the source)."""
        return {"path": self.path, "weights": self.weights, "variant": self.variant,
                "num_classes": self.num_classes, "model_kwargs": self.model_kwargs}


def read_init_source(init_from: str) -> InitSource:
    """Resolves `--init_from`: a run folder (its best weights, else its latest) or a
    `.weights.h5` file inside a run folder.

    Raises:
        FileNotFoundError: nothing there, no run.json beside the weights, or no weights.
        ValueError: a file that is not a Keras `.weights.h5`.
    """
    if os.path.isfile(init_from):
        if not init_from.endswith(".weights.h5"):
            raise ValueError(f"--init_from={init_from!r} is not a run folder or a .weights.h5 file.")
        folder, weights = os.path.dirname(os.path.abspath(init_from)), os.path.abspath(init_from)
    elif os.path.isdir(init_from):
        folder = os.path.abspath(init_from)
        weights = rundir.newest_weights(folder, f"--init_from={init_from!r}")
    else:
        raise FileNotFoundError(f"--init_from={init_from!r} does not exist; give a run folder "
                                "(trained, or written by `convert`) or a .weights.h5 file in one.")
    info = rundir.read_run_info(folder)
    return InitSource(path=os.path.abspath(init_from), weights=weights, variant=info["variant"],
                      num_classes=int(info["num_classes"]), model_kwargs=info.get("model_kwargs", {}),
                      class_names=tuple(info.get("class_names") or ()))


def resolve_init_source(config: TrainConfig, resuming: bool) -> InitSource | None:
    """The --init_from source; a resumed run takes it from its own run.json (no reload)."""
    if not config.init_from:
        return None
    if resuming and os.path.isfile(os.path.join(config.model_dir, rundir.RUN_INFO)):
        stored = rundir.read_run_info(config.model_dir).get("init_from")
        if stored:
            return InitSource(**stored)
    return read_init_source(config.init_from)


def with_variant(config: TrainConfig, init: InitSource | None) -> TrainConfig:
    """The config with the variant of the run it starts from (an explicit --model must agree)."""
    if init is None:
        if config.model is None:
            raise ValueError("No model variant: pass --model, or --init_from=RUN to take its variant.")
        return config
    if config.model is not None and config.model != init.variant:
        raise ValueError(f"--model={config.model} differs from the {init.variant!r} run of "
                         f"--init_from={config.init_from!r}; leave --model out to take its variant.")
    return dataclasses.replace(config, model=init.variant)


def load_init_weights(model: keras.Model, init: InitSource, class_names) -> str:
    """Copies the weights of `init` into `model`, layer by layer; fc8 stays new (as
    initialised) when the classes differ.

    Returns:
        A line for the log saying what was loaded.
    """
    source = rundir.build_from_run_info({"variant": init.variant, "num_classes": init.num_classes,
                                         "model_kwargs": init.model_kwargs})
    rundir.load_weights(source, init.weights)
    new_head = init.num_classes != len(class_names) or (
        bool(init.class_names) and list(init.class_names) != list(class_names))
    loaded = [name for name in WEIGHT_LAYERS if not (new_head and name == "fc8")]
    for name in loaded:
        model.get_layer(name).set_weights(source.get_layer(name).get_weights())
    head = (f"; fc8 is new ({len(class_names)} classes, freshly initialised; the source has "
            f"{init.num_classes})" if new_head else "")
    return f"Initialised {', '.join(loaded)} from {init.weights}{head}."


def freeze_before(model: keras.Model, layer_name: str | None) -> list[str]:
    """Freezes every layer before `layer_name` (one of `WEIGHT_LAYERS`); None freezes nothing.

    Returns:
        The names of the frozen layers that hold weights.

    Raises:
        ValueError: on a name that is not one of `WEIGHT_LAYERS`.
    """
    if layer_name is None:
        return []
    if layer_name not in WEIGHT_LAYERS:
        raise ValueError(f"`trainable_from` must be one of {WEIGHT_LAYERS}. "
                         f"Received: trainable_from={layer_name!r}")
    frozen = []
    for layer in model.layers:
        if layer.name == layer_name:
            break
        layer.trainable = False
        if layer.name in WEIGHT_LAYERS:
            frozen.append(layer.name)
    return frozen


def start_from(model, init: InitSource | None, class_names, config: TrainConfig, *, resuming: bool,
               verbose: bool) -> None:
    """Loads --init_from's weights (unless resuming: the checkpoint has them) and freezes
    the layers before --trainable_from."""
    if init is not None and not resuming:
        message = load_init_weights(model, init, class_names)
        if verbose and config.verbose:
            print(message)
    frozen = freeze_before(model, config.trainable_from)
    if frozen and verbose and config.verbose:
        print(f"Frozen (not trained, no weight decay): {', '.join(frozen)}; "
              f"trained from {config.trainable_from} on.")
