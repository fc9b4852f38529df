"""AlexNet builders (Krizhevsky et al. 2012) for the `paper`, `owt` and `cifar` variants."""

from __future__ import annotations

import dataclasses

import keras

from alexnet_tf.config import INITS, VARIANT_NAMES
from alexnet_tf.layers import LocalResponseNormalization

# Per-channel statistics of pixels in [0, 255].
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
CIFAR10_MEAN = (125.307, 122.950, 113.865)
CIFAR10_STD = (62.993, 62.089, 66.705)


@dataclasses.dataclass(frozen=True)
class Conv:
    name: str
    filters: int
    kernel: int
    stride: int = 1
    pad: int | str = "same"  # "same", "valid" or explicit symmetric zero padding
    grouped: bool = False    # split in two towers when groups=2 (§3.5 / Fig. 2)
    lrn: bool = False        # LRN after the ReLU (§3.3)
    pool: bool = False       # 3x3/2 overlapping max-pool after (LRN and) ReLU (§3.4)


@dataclasses.dataclass(frozen=True)
class VariantSpec:
    """Everything that differs between the variants."""
    input_size: int     # the crop the network sees
    stored_size: int    # the size images are stored at before the random / centre crop
    convs: tuple
    fc_units: int
    use_lrn: bool
    mean: tuple
    std: tuple
    default_init: str
    default_classes: int


VARIANTS = {
    # Krizhevsky et al. 2012, single tower: 227x227 so that conv1 gives 55x55.
    "paper": VariantSpec(
        input_size=227, stored_size=256, fc_units=4096, use_lrn=True,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, default_init="paper", default_classes=1000,
        convs=(Conv("conv1", 96, 11, 4, "valid", lrn=True, pool=True),
               Conv("conv2", 256, 5, grouped=True, lrn=True, pool=True),
               Conv("conv3", 384, 3),
               Conv("conv4", 384, 3, grouped=True),
               Conv("conv5", 256, 3, grouped=True, pool=True))),
    # "One weird trick" (Krizhevsky 2014), the layout of torchvision's alexnet.
    "owt": VariantSpec(
        input_size=224, stored_size=256, fc_units=4096, use_lrn=False,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, default_init="he", default_classes=1000,
        convs=(Conv("conv1", 64, 11, 4, 2, pool=True),
               Conv("conv2", 192, 5, pool=True),
               Conv("conv3", 384, 3),
               Conv("conv4", 256, 3),
               Conv("conv5", 256, 3, pool=True))),
    # The same 5-conv / 3-fc structure with LRN and overlapping pooling for 32x32 inputs.
    "cifar": VariantSpec(
        input_size=32, stored_size=32, fc_units=1024, use_lrn=True,
        mean=CIFAR10_MEAN, std=CIFAR10_STD, default_init="he", default_classes=10,
        convs=(Conv("conv1", 64, 3, lrn=True, pool=True),
               Conv("conv2", 192, 3, lrn=True, pool=True),
               Conv("conv3", 384, 3),
               Conv("conv4", 256, 3),
               Conv("conv5", 256, 3, pool=True))),
}

# §5: biases 1 in conv2, conv4, conv5 and the hidden fully-connected layers.
PAPER_ONE_BIAS = ("conv2", "conv4", "conv5", "fc6", "fc7")


def _initializers(init: str, name: str, seed):
    if init == "paper":
        return (keras.initializers.RandomNormal(0.0, 0.01, seed=seed),
                keras.initializers.Constant(1.0 if name in PAPER_ONE_BIAS else 0.0))
    if init == "he":
        return keras.initializers.HeNormal(seed=seed), keras.initializers.Zeros()
    return keras.initializers.GlorotUniform(seed=seed), keras.initializers.Zeros()


def _check_args(variant, num_classes, groups, init, dropout, mean, std):
    """Checks `build_alexnet`'s arguments; returns num_classes, init, mean and std with the
    variant's defaults filled in."""
    if variant not in VARIANTS:
        raise ValueError(f"Unknown AlexNet variant; expected one of {VARIANT_NAMES}. "
                         f"Received: variant={variant!r}")
    spec = VARIANTS[variant]
    if num_classes is None:
        num_classes = spec.default_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2. Received: num_classes={num_classes!r}")
    if groups not in (1, 2):
        raise ValueError(f"`groups` must be 1 or 2. Received: groups={groups!r}")
    init = init or spec.default_init
    if init not in INITS:
        raise ValueError(f"`init` must be one of {INITS}. Received: init={init!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
    mean = tuple(spec.mean if mean is None else mean)
    std = tuple(spec.std if std is None else std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"`mean` and `std` need 3 values, std positive. Received: mean={mean}, std={std}")
    return num_classes, init, mean, std


def build_alexnet(variant: str = "paper", num_classes: int | None = None, *,
                  groups: int = 1, init: str | None = None, dropout: float = 0.5,
                  lrn_implementation: str = "builtin", mean=None, std=None,
                  seed: int | None = None, name: str | None = None) -> keras.Model:
    """Builds an AlexNet as a Keras functional model.

    Args:
        variant: "paper", "owt" or "cifar" (see `VARIANTS`).
        num_classes: size of the `fc8` logits. Defaults to 1000 (paper, owt) or 10 (cifar).
        groups: 1 for a single tower, 2 for the paper's two-GPU connectivity
            (conv2, conv4 and conv5 see only their own half of the channels).
        init: "paper" (N(0, 0.01) weights, biases 1 in conv2/4/5 and fc6/7),
            "he" or "glorot". Defaults to the variant's `default_init`.
        dropout: rate of `dropout6` and `dropout7` (the paper's 0.5).
        lrn_implementation: "fused", "builtin" or "decomposed" (see `LocalResponseNormalization`).
        mean, std: per-channel pixel statistics in [0, 255] used by the
            in-model normalisation; default to the variant's.
        seed: seed of the weight initialisers.
        name: model name; defaults to `alexnet_<variant>`.

    Returns:
        A `keras.Model` mapping float pixels in [0, 255], shape
        [batch, S, S, 3], to `fc8` logits [batch, num_classes].

    Raises:
        ValueError: on an unknown variant, init or group count, or a bad class count.
    """
    num_classes, init, mean, std = _check_args(variant, num_classes, groups, init, dropout, mean, std)
    spec = VARIANTS[variant]

    def layer_seed(i):
        return None if seed is None else seed + i

    layers = keras.layers
    inputs = keras.Input(shape=(spec.input_size, spec.input_size, 3), name="images")
    x = layers.Normalization(mean=list(mean), variance=[s * s for s in std], name="normalize")(inputs)
    for i, conv in enumerate(spec.convs):
        w_init, b_init = _initializers(init, conv.name, layer_seed(i))
        padding = conv.pad
        if isinstance(padding, int):
            x = layers.ZeroPadding2D(padding, name=f"{conv.name}_pad")(x)
            padding = "valid"
        x = layers.Conv2D(conv.filters, conv.kernel, strides=conv.stride, padding=padding,
                          groups=groups if conv.grouped else 1, activation="relu",
                          kernel_initializer=w_init, bias_initializer=b_init, name=conv.name)(x)
        if conv.lrn:
            n = conv.name[-1]
            x = LocalResponseNormalization(implementation=lrn_implementation, name=f"lrn{n}")(x)
        if conv.pool:
            x = layers.MaxPooling2D(3, 2, padding="valid", name=f"pool{conv.name[-1]}")(x)
    x = layers.Flatten(name="flatten")(x)
    for i, fc in enumerate(("fc6", "fc7")):
        w_init, b_init = _initializers(init, fc, layer_seed(10 + i))
        x = layers.Dropout(dropout, seed=layer_seed(20 + i), name=f"dropout{fc[-1]}")(x)
        x = layers.Dense(spec.fc_units, activation="relu", kernel_initializer=w_init,
                         bias_initializer=b_init, name=fc)(x)
    w_init, b_init = _initializers(init, "fc8", layer_seed(12))
    if init == "he":  # a linear layer: He's ReLU gain would start the softmax far from uniform
        w_init = keras.initializers.GlorotUniform(seed=layer_seed(12))
    # fc8 gives logits; softmax belongs to the loss and to the serving signature.
    logits = layers.Dense(num_classes, kernel_initializer=w_init, bias_initializer=b_init,
                          dtype="float32", name="fc8")(x)
    return keras.Model(inputs, logits, name=name or f"alexnet_{variant}")


def forward_flops(model: keras.Model) -> int:
    """Forward FLOPs per image (2 x multiply-adds of the conv and dense layers).

    Bias adds, ReLU, LRN and pooling are left out, as is usual for this count.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            kh, kw, c_in_per_group, _ = layer.kernel.shape
            total += 2 * h * w * c_out * kh * kw * c_in_per_group
        elif isinstance(layer, keras.layers.Dense):
            c_in, c_out = layer.kernel.shape
            total += 2 * c_in * c_out
    return int(total)
