"""The one place for evaluation and serving geometry: resize, centre crop.

Training, evaluation, export and TFLite calibration all import these, so a
served model sees exactly the pixels that evaluation measured.
Per-channel normalisation is not here: it is the model's `normalize` layer.
"""

from __future__ import annotations

import tensorflow as tf

from alexnet_tf.model import VARIANTS


def geometry(variant: str) -> tuple[int, int]:
    """Returns (stored_size, crop_size) of a model variant.

    Images are stored (host side) at `stored_size` x `stored_size`; the model sees
    a `crop_size` crop of them: random in training, central in evaluation.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant; expected one of {sorted(VARIANTS)}. "
                         f"Received: variant={variant!r}")
    spec = VARIANTS[variant]
    return spec.stored_size, spec.input_size


def resize_and_center(images: tf.Tensor, size: int) -> tf.Tensor:
    """Scales the shorter side to `size` and takes the central size x size square (§2).

    Args:
        images: uint8 or float pixels in [0, 255], [H, W, C] or [B, H, W, C], any H, W.
        size: output side.

    Returns:
        uint8 [size, size, C] or [B, size, size, C]. Images already of that
        size pass through unchanged.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    h, w = shape[-3], shape[-2]

    def rescale():
        scale = tf.cast(size, tf.float32) / tf.cast(tf.minimum(h, w), tf.float32)
        new_h = tf.maximum(size, tf.cast(tf.round(tf.cast(h, tf.float32) * scale), tf.int32))
        new_w = tf.maximum(size, tf.cast(tf.round(tf.cast(w, tf.float32) * scale), tf.int32))
        resized = tf.image.resize(tf.cast(images, tf.float32), tf.stack([new_h, new_w]),
                                  method="bilinear", antialias=True)
        resized = tf.clip_by_value(tf.round(resized), 0.0, 255.0)
        return tf.cast(center_crop(resized, size), tf.uint8)

    def keep():
        if images.dtype == tf.uint8:
            return images
        # Round like the resize branch does; a plain cast would truncate 254.7 to 254.
        return tf.cast(tf.clip_by_value(tf.round(tf.cast(images, tf.float32)), 0.0, 255.0),
                       tf.uint8)

    same = tf.logical_and(tf.equal(h, size), tf.equal(w, size))
    out = tf.cond(same, keep, rescale)
    static = images.shape.as_list()
    out.set_shape(static[:-3] + [size, size, static[-1]])
    return out


def center_crop(images: tf.Tensor, size: int) -> tf.Tensor:
    """The central size x size window of [H, W, C] or [B, H, W, C] images (H, W >= size)."""
    shape = tf.shape(images)
    top = (shape[-3] - size) // 2
    left = (shape[-2] - size) // 2
    return images[..., top:top + size, left:left + size, :]


def eval_images(images: tf.Tensor, variant: str) -> tf.Tensor:
    """Evaluation / serving preprocessing: any-size uint8 images -> float32 model input.

    Scales the shorter side to the variant's stored size, takes the central
    square, then the central crop of the model's input size.

    Args:
        images: [H, W, 3] or [B, H, W, 3], uint8 or float in [0, 255].
        variant: model variant name.

    Returns:
        float32 [.., crop, crop, 3] in [0, 255].
    """
    stored, crop = geometry(variant)
    return tf.cast(center_crop(resize_and_center(images, stored), crop), tf.float32)
