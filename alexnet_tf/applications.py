"""`AlexNet()`, `preprocess_input` and `decode_predictions` in the manner of `keras.applications`:
a model with ImageNet, torchvision, run-folder or Keras-file weights, its input preprocessing and
the decoding of its predictions."""

from __future__ import annotations

import functools
import os

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import imagenet_weights, pretrained, rundir
from alexnet_tf.config import (CLASSIFIER_ACTIVATIONS, POOLINGS, PRETRAINED_WEIGHTS,
                               VARIANT_NAMES)
from alexnet_tf.model import VARIANTS, build_alexnet
from data_pipeline import preprocess

_TORCH_SUFFIXES = (".pth", ".pt")
_WEIGHTS_FORMS = ("None (random initialisation), 'imagenet' (torchvision's ImageNet weights, "
                  "variant 'owt'), or the path of a run folder, a torchvision .pth file, a "
                  ".weights.h5 file or a .keras file")


def _torchvision_normalization() -> dict:
    return {"mean": [255.0 * m for m in pretrained.TORCHVISION_MEAN],
            "std": [255.0 * s for s in pretrained.TORCHVISION_STD]}


class _Weights:
    """Where `AlexNet`'s weights come from and what they say about the model."""

    def __init__(self, kind: str, path: str | None = None, info: dict | None = None,
                 model: keras.Model | None = None, state_dict: dict | None = None):
        self.kind = kind     # "none", "torch", "h5" (Keras weights) or "keras" (a Keras model file)
        self.path = path     # the file read
        self.info = info     # the run.json of the run holding them, if any
        self.model = model   # the loaded .keras model
        self.state_dict = state_dict  # the torchvision state dict
        self.origin = path   # what `weights` named (a run folder, a file, "imagenet")

    def describe(self) -> dict:
        """The variant, class count and options that the weights hold (those known)."""
        if self.kind == "torch":
            out = {"variant": "owt", "groups": 1, **_torchvision_normalization()}
            head = self.state_dict.get("classifier.6.bias")
            if head is not None and np.ndim(head) == 1:
                out["classes"] = int(np.shape(head)[0])
            return out
        if self.info is not None:
            kwargs = self.info.get("model_kwargs") or {}
            return {"variant": self.info["variant"], "classes": int(self.info["num_classes"]),
                    "groups": kwargs.get("groups") or 1,
                    **{k: kwargs[k] for k in ("mean", "std", "init", "dropout") if kwargs.get(k) is not None}}
        if self.kind == "keras":
            out = {}
            layers = {layer.name: layer for layer in self.model.layers}
            side = tuple(self.model.input.shape[1:3])
            sized = [name for name, spec in VARIANTS.items() if side == (spec.input_size,) * 2]
            if "fc6" in layers and len(sized) == 1:  # fc6 fixes the input size of a variant
                out["variant"] = sized[0]
            if "fc8" in layers:
                out["classes"] = int(layers["fc8"].units)
            if "normalize" in layers:
                config = layers["normalize"].get_config()
                out["mean"] = [float(m) for m in np.ravel(config["mean"])]
                out["std"] = [float(v) ** 0.5 for v in np.ravel(config["variance"])]
            return out
        return {}


def _resolve_weights(weights) -> _Weights:
    if weights is None:
        return _Weights("none")
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str):
        raise ValueError(f"`weights` must be {_WEIGHTS_FORMS}. Received: weights={weights!r}")
    if weights in PRETRAINED_WEIGHTS:
        path = imagenet_weights.fetch()
        return _Weights("torch", path, state_dict=pretrained.read_torchvision_state_dict(path))
    if os.path.isdir(weights):
        info = rundir.read_run_info(weights)
        source = _Weights("h5", rundir.newest_weights(weights, f"The run {weights!r}"), info)
        source.origin = weights
        return source
    if not os.path.isfile(weights):
        raise ValueError(f"`weights` must be {_WEIGHTS_FORMS}; there is no such file or folder. "
                         f"Received: weights={weights!r}")
    if weights.endswith(_TORCH_SUFFIXES):
        return _Weights("torch", weights, state_dict=pretrained.read_torchvision_state_dict(weights))
    if weights.endswith(".weights.h5"):
        folder = os.path.dirname(os.path.abspath(weights))
        beside = os.path.isfile(os.path.join(folder, rundir.RUN_INFO))
        return _Weights("h5", weights, rundir.read_run_info(folder) if beside else None)
    if weights.endswith(".keras"):
        model = keras.saving.load_model(weights, compile=False)
        missing = [name for name in ("conv1", "conv5", "pool5") if name not in
                   {layer.name for layer in model.layers}]
        if missing:
            raise ValueError(f"{weights} holds no AlexNet: it has no layer {missing[0]!r}.")
        return _Weights("keras", weights, model=model)
    raise ValueError(f"`weights` must be {_WEIGHTS_FORMS}; this file's name ends in none of "
                     f"{_TORCH_SUFFIXES + ('.weights.h5', '.keras')}. Received: weights={weights!r}")


def _pool5_side(variant: str, side: int) -> int:
    """The side of pool5's output for a side x side input (0 when a layer's output would be empty)."""
    for conv in VARIANTS[variant].convs:
        if conv.pad == "same":
            side = -(-side // conv.stride)
        else:
            pad = 0 if conv.pad == "valid" else conv.pad
            side = max(0, (side + 2 * pad - conv.kernel) // conv.stride + 1)
        if conv.pool:
            side = max(0, (side - 3) // 2 + 1)  # 3x3/2 valid max-pool (§3.4)
        if side < 1:
            return 0
    return side


def min_input_size(variant: str) -> int:
    """The smallest input side for which `variant`'s convolutions and pools give pool5 >= 1x1."""
    return next(side for side in range(1, VARIANTS[variant].input_size + 1)
                if _pool5_side(variant, side) >= 1)


def _input_shape(variant: str, include_top: bool, input_shape) -> tuple:
    size = VARIANTS[variant].input_size
    default = (size, size, 3)
    if input_shape is None:
        return default if include_top else (None, None, 3)
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if (shape is None or len(shape) != 3 or shape[-1] != 3
            or any(d is not None and (isinstance(d, bool) or not isinstance(d, int)) for d in shape)):
        raise ValueError("`input_shape` must be (height, width, 3): the model takes RGB pixels. "
                         f"Received: input_shape={input_shape!r}")
    if include_top:
        if shape != default:
            raise ValueError(f"With `include_top=True` the {variant!r} AlexNet takes {default} "
                             "images (fc6 is sized for them); pass include_top=False for other "
                             f"sizes. Received: input_shape={input_shape!r}")
        return shape
    smallest = min_input_size(variant)
    if any(d is not None and d < smallest for d in shape[:2]):
        raise ValueError(f"Input size must be at least {smallest}x{smallest} for the {variant!r} "
                         f"AlexNet. Received: input_shape={input_shape!r}")
    return shape


def _check_fits(source: _Weights, held: dict, asked: dict) -> None:
    """Refuses weights made for another variant, class count or tower count, in one message."""
    wrong = {k: v for k, v in asked.items() if k in held and held[k] != v}
    if not wrong:
        return
    what = source.origin or "The weights"
    holds = ", ".join(f"{k}={held[k]!r}" for k in asked if k in held)
    call = ", ".join(f"{k}={held[k]!r}" for k in wrong)
    received = ", ".join(f"{k}={v!r}" for k, v in wrong.items())
    raise ValueError(f"{what} holds an AlexNet with {holds}; call AlexNet({call}, ...) to load it. "
                     f"Received: {received}")


def _copy_weights(source: keras.Model, target: keras.Model, where: str) -> None:
    """Copies the weights of `target`'s layers from `source`'s layers of the same name."""
    for layer in target.layers:
        if not layer.weights or layer is _layer(source, layer.name):
            continue
        other = _layer(source, layer.name)
        if other is None:
            raise ValueError(f"{where} has no layer {layer.name!r}; it cannot give "
                             f"{target.name}'s weights.")
        ours = [tuple(w.shape) for w in layer.weights]
        theirs = [tuple(w.shape) for w in other.weights]
        if ours != theirs:
            raise ValueError(f"{where}: layer {layer.name!r} holds weights of shapes {theirs}, where "
                             f"{target.name} has {ours}: another variant or groups.")
        layer.set_weights(other.get_weights())


def _layer(model: keras.Model, name: str):
    return next((layer for layer in model.layers if layer.name == name), None)


def _feature_extractor(base: keras.Model, input_shape: tuple) -> keras.Model:
    """Fresh copies of `base`'s layers from its input to pool5, on an `input_shape` input."""
    inputs = keras.Input(shape=input_shape, name="images")
    x = inputs
    for layer in base.layers[1:]:
        x = type(layer).from_config(layer.get_config())(x)
        if layer.name == "pool5":
            break
    return keras.Model(inputs, x, name=base.name)


def AlexNet(variant: str = "owt", weights=None, include_top: bool = True, input_shape=None,
            pooling: str | None = None, classes: int = 1000,
            classifier_activation: str | None = "softmax", groups: int = 1) -> keras.Model:
    """Instantiates an AlexNet, in the manner of `keras.applications.VGG16`.

    The model takes float pixels in [0, 255] (see `preprocess_input`) and normalises them
    itself in its `normalize` layer. Its layers carry the paper's names (`conv1`..`conv5`,
    `pool5`, `fc6`, `fc7`, `fc8`); `fc8` gives logits and `classifier_activation` is a
    separate `predictions` layer after it.

    Args:
        variant: "owt" (torchvision's layout, 224x224), "paper" (227x227, LRN) or
            "cifar" (32x32).
        weights: None (random initialisation); "imagenet" (torchvision's ImageNet weights,
            downloaded into Keras' cache and checked, `owt` only; see docs/python.md for
            `ALEXNET_TF_WEIGHTS_MIRROR`); or a path: a run folder (its best weights, else
            its latest), a torchvision state dict (.pth/.pt, `owt` only), a `.weights.h5`
            file of a run, or a `.keras` file. Weights are copied layer by layer by name;
            `variant`, `classes` and `groups` must be those the weights were made with.
        include_top: whether to end in fc6-fc8 and the classifier; False ends at pool5.
        input_shape: (height, width, 3). With `include_top` only the variant's crop is
            allowed (the default); without it any size down to `min_input_size(variant)`,
            None dimensions included (the default is (None, None, 3)).
        pooling: without `include_top`: None (the [batch, h, w, 256] pool5 map), "avg"
            (`avg_pool`, GlobalAveragePooling2D) or "max" (`max_pool`, GlobalMaxPooling2D),
            both a 256-vector per image.
        classes: the class count of `fc8` (with `include_top`); 1000 for "imagenet".
        classifier_activation: "softmax" (a `predictions` layer after fc8) or None (the
            model outputs fc8's logits).
        groups: 1, or 2 for the paper's two-tower connectivity.

    Returns:
        A `keras.Model` named `alexnet_<variant>`.

    Raises:
        ValueError: a bad argument, weights that do not fit the arguments, or a file
            that holds no AlexNet; the message names the argument ("Received: ...").
        ConnectionError: the "imagenet" download failed (see `imagenet_weights.fetch`).
        FileNotFoundError: a run folder without run.json or weights.
    """
    input_shape = _check_args(variant, weights, include_top, input_shape, pooling, classes,
                              classifier_activation, groups)
    source = _resolve_weights(weights)
    held = source.describe()
    asked = {"variant": variant, "groups": groups, **({"classes": classes} if include_top else {})}
    _check_fits(source, held, asked)
    norm = {k: held[k] for k in ("mean", "std", "init", "dropout") if k in held}
    base_classes = classes if include_top else held.get("classes", classes)
    base = build_alexnet(variant, base_classes, groups=groups, **norm)
    where = source.origin or "The weights"
    _load_base(base, source, variant, base_classes, groups)
    model = _with_head(base, include_top, input_shape, pooling, classifier_activation)
    _copy_weights(source.model if source.kind == "keras" else base, model, where)
    return model


def _check_args(variant, weights, include_top, input_shape, pooling, classes,
                classifier_activation, groups):
    """AlexNet()'s argument checks, in Keras' words; returns the resolved input shape."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown AlexNet variant; expected one of {VARIANT_NAMES}. "
                         f"Received: variant={variant!r}")
    if not isinstance(include_top, bool):
        raise ValueError(f"`include_top` must be True or False. Received: include_top={include_top!r}")
    if pooling is not None and pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be None or one of {POOLINGS}. Received: pooling={pooling!r}")
    if include_top and pooling is not None:
        raise ValueError("`pooling` applies to the pool5 features: pass include_top=False with it. "
                         f"Received: pooling={pooling!r}, include_top=True")
    if classifier_activation is not None and classifier_activation not in CLASSIFIER_ACTIVATIONS:
        raise ValueError(f"`classifier_activation` must be None (logits) or one of "
                         f"{CLASSIFIER_ACTIVATIONS}. Received: classifier_activation={classifier_activation!r}")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"`classes` must be an integer >= 2. Received: classes={classes!r}")
    if groups not in (1, 2):
        raise ValueError(f"`groups` must be 1 or 2. Received: groups={groups!r}")
    input_shape = _input_shape(variant, include_top, input_shape)
    if isinstance(weights, str) and weights in PRETRAINED_WEIGHTS:
        if variant != "owt":
            raise ValueError("weights='imagenet' are torchvision's, for the 'owt' variant. "
                             f"Received: variant={variant!r}")
        if include_top and classes != 1000:
            raise ValueError("If using `weights='imagenet'` with `include_top=True`, `classes` "
                             f"should be 1000. Received: classes={classes}")

    return input_shape


def _load_base(base: keras.Model, source, variant: str, classes: int, groups: int) -> None:
    """Loads a torchvision state dict or a `.weights.h5` file into the full model `base`."""
    if source.kind == "torch":
        pretrained.set_torchvision_weights(base, source.state_dict)
        source.state_dict = None
    elif source.kind == "h5":
        try:
            base.load_weights(source.path)
        except ValueError as e:
            detail = " ".join(str(e).split(" Target variable:")[0].split())
            raise ValueError(f"{source.path} does not fit AlexNet(variant={variant!r}, "
                             f"classes={classes}, groups={groups}): {detail}") from None


def _with_head(base: keras.Model, include_top: bool, input_shape, pooling, classifier_activation):
    """`base` with the classifier activation after fc8, or cut at pool5 (and pooled)."""
    if include_top:
        outputs = base.output
        if classifier_activation is not None:
            outputs = keras.layers.Activation(classifier_activation, dtype="float32",
                                              name="predictions")(outputs)
        return keras.Model(base.input, outputs, name=base.name)
    model = _feature_extractor(base, input_shape)
    x = model.output
    if pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(model.input, x, name=base.name)


def preprocess_input(images, variant: str = "owt"):
    """The evaluation geometry that `AlexNet` expects: any-size images -> its input crop.

    Scales the shorter side to the variant's stored size (256; `cifar` 32) and takes the
    central crop of the model's input size (224 `owt`, 227 `paper`, 32 `cifar`), as
    evaluation and the exported SavedModel do. The pixels stay in [0, 255]: per-channel
    normalisation is inside the model (its `normalize` layer), so there is nothing else
    to do.

    Args:
        images: uint8 (or float in [0, 255]) RGB pixels, one image [H, W, 3] or a batch
            [B, H, W, 3] of one size; a NumPy array (or anything `np.asarray` takes) or a
            tensor.
        variant: the model variant the images are for.

    Returns:
        float32 [crop, crop, 3] or [B, crop, crop, 3] in [0, 255]: a NumPy array, or a
        tensor for a tensor input.

    Raises:
        ValueError: an unknown variant, or images that are not [H, W, 3] / [B, H, W, 3].
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown AlexNet variant; expected one of {VARIANT_NAMES}. "
                         f"Received: variant={variant!r}")
    is_tensor = tf.is_tensor(images)
    x = images if is_tensor else np.asarray(images)
    shape = tuple(x.shape)
    if len(shape) not in (3, 4) or shape[-1] != 3:
        raise ValueError("`images` must be RGB pixels, [height, width, 3] or [batch, height, "
                         f"width, 3]. Received: images.shape={shape}")
    out = preprocess.eval_images(x, variant)
    return out if is_tensor else out.numpy()


@functools.lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    wnids, names = pretrained.imagenet_classes()
    return tuple(wnids), tuple(names)


def decode_predictions(preds, top: int = 5, class_names=None) -> list[list[tuple[str, str, float]]]:
    """The `top` classes of each prediction, as `keras.applications` decodes them.

    Args:
        preds: [batch, classes] probabilities or logits (NumPy array or tensor).
        top: how many classes per image, best first (all of them when there are fewer).
        class_names: the model's class names in index order (e.g. a run's
            `run.json: class_names`); None for ImageNet's 1000 classes in torchvision's
            order (the "imagenet" weights and runs written by `convert`).

    Returns:
        One list per image of (class_id, class_name, score) tuples, score a float. For
        ImageNet class_id is the WordNet id ("n01440764", "tench", 0.93). With
        `class_names` the id is the name itself (a folder dataset's class folder names,
        which are WordNet ids for ImageNet-style trees).

    Raises:
        ValueError: `preds` is not [batch, classes] for the class count, or `top` < 1.
    """
    preds = np.asarray(keras.ops.convert_to_numpy(preds))
    if class_names is None:
        ids, names = _imagenet_classes()
    else:
        names = tuple(str(n) for n in class_names)
        ids = names
    if preds.ndim != 2 or preds.shape[1] != len(names):
        raise ValueError(f"`decode_predictions` expects a batch of predictions (a 2D array of shape "
                         f"(samples, {len(names)})). Received: preds.shape={preds.shape}")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"`top` must be a positive integer. Received: top={top!r}")
    results = []
    for row in preds:
        order = np.argsort(-row, kind="stable")[:top]
        results.append([(ids[i], names[i], float(row[i])) for i in order])
    return results
