"""Grad-CAM (Selvaraju et al. 2017): where in the image a class's evidence lies, from conv5.

Needs the Keras model (gradients to a convolution's activations), so it runs on a training
run's folder; an exported SavedModel or TFLite file holds only the serving graph.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

OVERLAY_ALPHA = 0.5
MIN_DISPLAY_SIDE = 128  # smaller crops (cifar's 32x32) are enlarged by a whole factor


def _conv_and_logits(model: keras.Model, layer: str) -> keras.Model:
    try:
        activations = model.get_layer(layer).output
    except ValueError:
        raise ValueError(f"The model {model.name!r} has no layer named {layer!r}. "
                         f"Received: layer={layer!r}") from None
    if len(activations.shape) != 4:
        raise ValueError(f"Grad-CAM needs a convolution's [batch, h, w, channels] output; "
                         f"{layer!r} gives shape {tuple(activations.shape)}. Received: layer={layer!r}")
    return keras.Model(model.input, [activations, model.output])


def grad_cam_maps(model: keras.Model, images, layer: str = "conv5",
                  class_index=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM at the resolution of `layer`, before upsampling and normalisation.

    For class c with logit y_c and the layer's activations A (channels k):
    alpha_k = mean over (i, j) of dy_c / dA_ij^k; map = ReLU(sum_k alpha_k A^k).

    Args:
        model: a model whose output is logits (`fc8`).
        images: float model inputs [B, crop, crop, 3] (pixels in [0, 255]).
        layer: the convolution to explain at.
        class_index: one class per image (int or [B]); default: each image's top class.

    Returns:
        (maps float32 [B, h, w], class indices int [B], logits float32 [B, classes]).

    Raises:
        ValueError: no such layer, or a layer without a spatial output.
    """
    probe = _conv_and_logits(model, layer)
    images = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        activations, logits = probe(images, training=False)
        activations = tf.cast(activations, tf.float32)
        logits = tf.cast(logits, tf.float32)
        if class_index is None:
            classes = tf.argmax(logits, axis=-1, output_type=tf.int32)
        else:
            classes = tf.broadcast_to(tf.cast(class_index, tf.int32), tf.shape(logits)[:1])
        chosen = tf.gather(logits, classes, axis=1, batch_dims=1)
    grads = tape.gradient(chosen, activations)           # [B, h, w, k]
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(weights * activations, axis=-1))
    return maps.numpy(), classes.numpy(), logits.numpy()


def grad_cam(model: keras.Model, images, layer: str = "conv5", class_index=None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM heat-maps at the size of the input crop, each scaled to [0, 1].

    The map of `grad_cam_maps` is upsampled bilinearly to the crop, then min-max scaled
    per image (a map without positive evidence stays 0).

    Args:
        model, images, layer, class_index: see `grad_cam_maps`.

    Returns:
        (heat-maps float32 [B, crop, crop] in [0, 1], class indices [B], logits [B, classes]).
    """
    maps, classes, logits = grad_cam_maps(model, images, layer, class_index)
    size = tf.shape(tf.convert_to_tensor(images))[1:3]
    heat = tf.image.resize(maps[..., None], size, method="bilinear")[..., 0].numpy()
    low = heat.min(axis=(1, 2), keepdims=True)
    span = heat.max(axis=(1, 2), keepdims=True) - low
    heat = np.where(span > 0, (heat - low) / np.where(span > 0, span, 1.0), 0.0)
    return heat.astype(np.float32), classes, logits


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """A heat-map drawn in colour (matplotlib's "jet") over an image.

    Args:
        image: uint8 or float [H, W, 3] pixels in [0, 255].
        heat: [H, W] values in [0, 1].
        alpha: weight of the colour.

    Returns:
        uint8 [H, W, 3].
    """
    from matplotlib import colormaps

    if image.shape[:2] != heat.shape:
        raise ValueError(f"The heat-map must have the image's size. Received: image shape "
                         f"{image.shape}, heat shape {heat.shape}")
    colour = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    mixed = (1.0 - alpha) * np.asarray(image, np.float32) + alpha * colour
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def display_scale(side: int) -> int:
    """The whole factor that enlarges a crop side to at least `MIN_DISPLAY_SIDE` pixels."""
    return max(1, -(-MIN_DISPLAY_SIDE // side))


def save_overlay(path: str, image: np.ndarray, heat: np.ndarray) -> str:
    """Writes the overlay of `heat` on `image` as a PNG, enlarged by `display_scale`
    (nearest neighbour) when the crop is small. Returns `path`."""
    from PIL import Image

    picture = overlay(image, heat)
    scale = display_scale(max(picture.shape[:2]))
    if scale > 1:
        picture = picture.repeat(scale, axis=0).repeat(scale, axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(picture).save(path, format="PNG")
    return path
