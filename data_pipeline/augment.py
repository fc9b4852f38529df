"""Batched training augmentation that runs on the device inside the train step: pure functions
of (images, seed) built on stateless RNG, with a separate draw for every image (§4.1).
Also `ten_crop` for test-time augmentation and `estimate_rgb_pca` for the colour jitter.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence, Union

import numpy as np
import tensorflow as tf

from data_pipeline import preprocess

# `pca_jitter` eigenvalues are of the covariance of pixels scaled to [0, 1]; deltas are
# scaled back to [0, 255]. With alpha ~ N(0, 0.1) this moves ImageNet pixels by a few levels.
PCA_PIXEL_SCALE = 255.0

SeedLike = Union[tf.Tensor, Sequence[int]]  # shape [2], e.g. [run_seed, global_step]

# Sub-streams of `augment_batch`'s seed, one per transformation.
_CROP, _FLIP, _VFLIP, _AFFINE, _PCA, _NOISE, _CUTOUT = range(1, 8)


def _as_seed(seed) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise ValueError(f"`seed` must be integers. Received: seed dtype={seed.dtype.name}")
    if seed.shape.rank is not None and seed.shape.as_list() != [2]:
        raise ValueError(f"`seed` must have shape [2], e.g. [run_seed, global_step]. "
                         f"Received: seed shape={seed.shape}")
    return _canonical(seed)


def _canonical(seed: tf.Tensor) -> tf.Tensor:
    # Seed words outside [0, 2**31) give different streams with and without XLA.
    return tf.bitwise.bitwise_and(tf.cast(seed, tf.int64), 0x7FFFFFFF)


def _sub_seed(seed: tf.Tensor, stream: int) -> tf.Tensor:
    return _canonical(tf.random.experimental.stateless_fold_in(seed, stream))


def _split(seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tuple(tf.unstack(_canonical(tf.random.experimental.stateless_split(seed, 2))))


def _uniform(shape, seed: tf.Tensor) -> tf.Tensor:
    """float32 U[0, 1) from integer random bits.

    TensorFlow's float stateless draws differ with and without XLA; its integer bits do
    not, so these draws are the same in eager, tf.function and jit_compile code.
    """
    bits = tf.random.stateless_uniform(shape, seed, minval=None, maxval=None, dtype=tf.uint32)
    return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))


def _normal(shape, seed: tf.Tensor) -> tf.Tensor:
    """float32 N(0, 1) by the Box-Muller transform of `_uniform` draws."""
    u = _uniform(tf.concat([[2], tf.cast(shape, tf.int32)], axis=0), seed)
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - u[0]))  # 1 - u in (0, 1]
    return radius * tf.cos((2.0 * math.pi) * u[1])


def _check_images(images: tf.Tensor) -> tf.Tensor:
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(f"Expected a batch of images [B, H, W, C]. "
                         f"Received: images shape={images.shape}")
    return images


def random_crop(images: tf.Tensor, seed: SeedLike, size: int,
                pad: int = 0) -> tf.Tensor:
    """A size x size crop at its own random offset in every image (§4.1 random 224/227 crops;
    CIFAR: pad 4 with zeros, then crop 32).

    Args:
        images: [B, H, W, C], any dtype.
        seed: shape-[2] integer seed.
        size: crop side, <= H + 2 pad and <= W + 2 pad.
        pad: zero padding added to each side first.

    Returns:
        [B, size, size, C], same dtype; crop b is an exact slice of padded image b.
    """
    return _crop_and_flip(images, _as_seed(seed), size, pad)


def _flips(seed: tf.Tensor, batch: tf.Tensor, prob: float) -> tf.Tensor:
    return _uniform([batch], seed) < prob


def _crop_and_flip(images, seed, size, pad, flip_seed=None, vflip_seed=None, prob=0.5):
    """`random_crop`, then optionally `random_flip` (horizontal, vertical), as two gathers.

    Mirroring is folded into the gather indices, which is much cheaper than separate
    reverse-and-select passes over the batch and gives exactly the same pixels.
    """
    images = _check_images(images)
    if pad:
        images = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    height, width = images.shape[1], images.shape[2]
    if (height is not None and height < size) or (width is not None and width < size):
        raise ValueError(f"Crop larger than the (padded) images {height}x{width}. "
                         f"Received: size={size}")
    shape = tf.shape(images)
    batch = shape[0]
    seed_y, seed_x = _split(seed)
    top = tf.random.stateless_uniform([batch], seed_y, 0, shape[1] - size + 1, tf.int32)
    left = tf.random.stateless_uniform([batch], seed_x, 0, shape[2] - size + 1, tf.int32)
    steps = tf.range(size, dtype=tf.int32)[None, :]
    rows = cols = tf.broadcast_to(steps, tf.stack([batch, size]))            # [B, size]
    if vflip_seed is not None:
        rows = tf.where(_flips(vflip_seed, batch, prob)[:, None], size - 1 - steps, rows)
    if flip_seed is not None:
        cols = tf.where(_flips(flip_seed, batch, prob)[:, None], size - 1 - steps, cols)
    out = tf.gather(images, top[:, None] + rows, axis=1, batch_dims=1)       # [B, size, W, C]
    return tf.gather(out, left[:, None] + cols, axis=2, batch_dims=1)        # [B, size, size, C]


def random_flip(images: tf.Tensor, seed: SeedLike, prob: float = 0.5,
                direction: str = "horizontal") -> tf.Tensor:
    """Mirrors each image with probability `prob`, independently per image.

    Args:
        images: [B, H, W, C].
        seed: shape-[2] integer seed.
        prob: flip probability in [0, 1].
        direction: "horizontal" (left-right, §4.1) or "vertical" (upside down).

    Returns:
        [B, H, W, C], same dtype.
    """
    if direction not in ("horizontal", "vertical"):
        raise ValueError(f"`direction` must be 'horizontal' or 'vertical'. "
                         f"Received: direction={direction!r}")
    images = _check_images(images)
    flip = _flips(_as_seed(seed), tf.shape(images)[0], prob)
    mirrored = tf.reverse(images, axis=[2 if direction == "horizontal" else 1])
    return tf.where(flip[:, None, None, None], mirrored, images)


def random_rotate_scale(images: tf.Tensor, seed: SeedLike, max_degrees: float = 0.0,
                        max_scale: float = 0.0) -> tf.Tensor:
    """Rotates each image by its own angle in [-max_degrees, max_degrees] and zooms it by a
    factor in [1 - max_scale, 1 + max_scale] about its centre; bilinear, zeros outside.

    Args:
        images: [B, H, W, C].
        seed: shape-[2] integer seed.
        max_degrees: largest rotation.
        max_scale: largest relative zoom, in [0, 1).

    Returns:
        float32 [B, H, W, C].
    """
    images = _check_images(images)
    seed_a, seed_s = _split(_as_seed(seed))
    batch = tf.shape(images)[0]
    limit = math.radians(max_degrees)
    angles = limit * (2.0 * _uniform([batch], seed_a) - 1.0)
    scales = 1.0 + max_scale * (2.0 * _uniform([batch], seed_s) - 1.0)
    return rotate_scale(images, angles, scales)


def rotate_scale(images: tf.Tensor, angles: tf.Tensor, scales: tf.Tensor) -> tf.Tensor:
    """Rotates image b by angles[b] radians (counter-clockwise as displayed) and zooms it by
    scales[b] about its centre; bilinear sampling, zeros outside the source.

    Args:
        images: [B, H, W, C].
        angles: float [B] radians.
        scales: float [B] zoom factors (> 1 enlarges).

    Returns:
        float32 [B, H, W, C].
    """
    images = tf.cast(_check_images(images), tf.float32)
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    ys, xs = tf.meshgrid(tf.range(hf), tf.range(wf), indexing="ij")           # [H, W]
    dy, dx = ys - (hf - 1) / 2, xs - (wf - 1) / 2
    cos = tf.cos(angles)[:, None, None]
    sin = tf.sin(angles)[:, None, None]
    inv = 1.0 / tf.cast(scales, tf.float32)[:, None, None]
    # Source pixel of each output pixel: the inverse rotation and zoom (y points down).
    src_y = (cos * dy + sin * dx) * inv + (hf - 1) / 2                        # [B, H, W]
    src_x = (cos * dx - sin * dy) * inv + (wf - 1) / 2
    y0, x0 = tf.floor(src_y), tf.floor(src_x)
    wy, wx = (src_y - y0)[..., None], (src_x - x0)[..., None]
    flat = tf.reshape(images, [batch, height * width, channels])

    def tap(y, x):
        inside = (y >= 0) & (y <= hf - 1) & (x >= 0) & (x <= wf - 1)
        yi = tf.cast(tf.clip_by_value(y, 0, hf - 1), tf.int32)
        xi = tf.cast(tf.clip_by_value(x, 0, wf - 1), tf.int32)
        index = tf.reshape(yi * width + xi, [batch, -1])
        values = tf.reshape(tf.gather(flat, index, batch_dims=1), tf.shape(images))
        return values * tf.cast(inside, tf.float32)[..., None]

    top = tap(y0, x0) * (1 - wx) + tap(y0, x0 + 1) * wx
    bottom = tap(y0 + 1, x0) * (1 - wx) + tap(y0 + 1, x0 + 1) * wx
    return top * (1 - wy) + bottom * wy


def gaussian_noise(images: tf.Tensor, seed: SeedLike, std: float) -> tf.Tensor:
    """Adds N(0, std^2) noise, std in pixel levels (0-255 scale), independently per pixel.

    Returns:
        float32 [B, H, W, C], not clipped.
    """
    images = tf.cast(_check_images(images), tf.float32)
    return images + std * _normal(tf.shape(images), _as_seed(seed))


def cutout(images: tf.Tensor, seed: SeedLike, size: int) -> tf.Tensor:
    """Cutout (DeVries & Taylor, 2017): in every image, a size x size square centred on its
    own random pixel, clipped at the borders, takes the image's mean colour.

    The image's own mean colour, rather than black, keeps the square inside the range of
    its pixels and near what the model's per-channel input normalisation maps to zero,
    without depending on the dataset's statistics.

    Args:
        images: [B, H, W, C].
        seed: shape-[2] integer seed.
        size: side of the square (0: no change).

    Returns:
        float32 [B, H, W, C].
    """
    images = tf.cast(_check_images(images), tf.float32)
    if size <= 0:
        return images
    shape = tf.shape(images)
    seed_y, seed_x = _split(_as_seed(seed))
    centre_y = tf.random.stateless_uniform([shape[0]], seed_y, 0, shape[1], tf.int32)
    centre_x = tf.random.stateless_uniform([shape[0]], seed_x, 0, shape[2], tf.int32)

    def inside(length, centre):                                               # [B, length]
        start = (centre - size // 2)[:, None]
        steps = tf.range(length, dtype=tf.int32)[None, :]
        return (steps >= start) & (steps < start + size)

    square = inside(shape[1], centre_y)[:, :, None] & inside(shape[2], centre_x)[:, None, :]
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return tf.where(square[..., None], mean, images)


def pca_jitter(images: tf.Tensor, seed: SeedLike, eigvals, eigvecs, std: float = 0.1) -> tf.Tensor:
    """The paper's colour augmentation (§4.1): adds sum_i alpha_i * lambda_i * p_i to every
    pixel of an image, alpha_i ~ N(0, std^2) drawn per image.

    Args:
        images: [B, H, W, 3] pixels in [0, 255].
        seed: shape-[2] integer seed.
        eigvals: [3] eigenvalues lambda_i of the RGB covariance of pixels in [0, 1]
            (see `estimate_rgb_pca`).
        eigvecs: [3, 3], column i the eigenvector p_i.
        std: standard deviation of the alphas (paper: 0.1).

    Returns:
        float32 [B, H, W, 3], not clipped; the delta is scaled by PCA_PIXEL_SCALE.
    """
    images = tf.cast(_check_images(images), tf.float32)
    eigvals = tf.reshape(tf.cast(eigvals, tf.float32), [3])
    eigvecs = tf.reshape(tf.cast(eigvecs, tf.float32), [3, 3])
    alphas = std * _normal(tf.stack([tf.shape(images)[0], 3]), _as_seed(seed))
    delta = tf.einsum("ij,bj->bi", eigvecs, alphas * eigvals) * PCA_PIXEL_SCALE    # [B, 3]
    return images + delta[:, None, None, :]


def _matrix(value, shape, name):
    if value is None:
        return None
    array = np.asarray(value, np.float64)
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` must be finite with shape {shape}. Received: {name}={value!r}")
    return tuple(map(tuple, array)) if array.ndim == 2 else tuple(array)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """What `augment_batch` does.

    Attributes:
        crop_size: side of the random crop, the model's input size.
        pad: zero padding on each side before cropping (CIFAR: 4).
        flip: random horizontal flips (§4.1).
        vertical_flip: random vertical flips (not in the paper).
        rotation: largest random rotation in degrees (0: off; not in the paper).
        scale: largest relative random zoom (0: off; not in the paper).
        noise_std: std of additive Gaussian noise in pixel levels (0: off).
        cutout: side of the square of `cutout` (0: off; not in the paper).
        pca_std: std of the PCA colour alphas (paper: 0.1; 0: off). Needs the eigenpairs.
        pca_eigvals: [3] eigenvalues from `estimate_rgb_pca`.
        pca_eigvecs: [3][3] eigenvectors (columns) from `estimate_rgb_pca`.
    """
    crop_size: int
    pad: int = 0
    flip: bool = True
    vertical_flip: bool = False
    rotation: float = 0.0
    scale: float = 0.0
    noise_std: float = 0.0
    cutout: int = 0
    pca_std: float = 0.0
    pca_eigvals: tuple | None = None
    pca_eigvecs: tuple | None = None

    def __post_init__(self):
        if isinstance(self.crop_size, bool) or not isinstance(self.crop_size, int) \
                or self.crop_size < 1:
            raise ValueError(f"`crop_size` must be a positive integer. "
                             f"Received: crop_size={self.crop_size!r}")
        if isinstance(self.pad, bool) or not isinstance(self.pad, int) or self.pad < 0:
            raise ValueError(f"`pad` must be an integer >= 0. Received: pad={self.pad!r}")
        for name in ("rotation", "noise_std", "pca_std"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"`{name}` must be >= 0. Received: {name}={getattr(self, name)!r}")
        if isinstance(self.cutout, bool) or not isinstance(self.cutout, int) or self.cutout < 0:
            raise ValueError(f"`cutout` must be an integer >= 0. Received: cutout={self.cutout!r}")
        if not 0 <= self.scale < 1:
            raise ValueError(f"`scale` must be in [0, 1). Received: scale={self.scale!r}")
        object.__setattr__(self, "pca_eigvals", _matrix(self.pca_eigvals, (3,), "pca_eigvals"))
        object.__setattr__(self, "pca_eigvecs", _matrix(self.pca_eigvecs, (3, 3), "pca_eigvecs"))
        if self.pca_std > 0 and (self.pca_eigvals is None or self.pca_eigvecs is None):
            raise ValueError(f"PCA colour augmentation needs `pca_eigvals` and `pca_eigvecs` "
                             f"(from estimate_rgb_pca), or pca_std=0. "
                             f"Received: pca_std={self.pca_std!r}")

    @classmethod
    def for_variant(cls, variant: str, **overrides) -> "AugmentConfig":
        """The paper's recipe for a variant: crops of the model's input size from the stored
        images (paper 227 and owt 224 from 256; cifar: pad 4, crop 32) and flips.

        Args:
            variant: "paper", "owt" or "cifar".
            **overrides: any other field, e.g. pca_std=0.1, pca_eigvals=..., pca_eigvecs=....
        """
        _, crop = preprocess.geometry(variant)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"Unknown AugmentConfig fields {unknown}; expected some of "
                             f"{sorted(fields)}.")
        values = {"crop_size": crop, "pad": 4 if variant == "cifar" else 0}
        values.update(overrides)
        return cls(**values)


def augment_batch(images_uint8: tf.Tensor, seed: SeedLike, config: AugmentConfig) -> tf.Tensor:
    """Training augmentation of a batch: crop -> flip -> (vertical flip, rotation/zoom) ->
    PCA colour -> noise -> cutout -> clip to [0, 255].

    Pure and stateless: the same (images, seed) give the same draws in eager, tf.function
    and jit_compile code (crop offsets and flips exactly, float results up to rounding), so
    with seed = [run_seed, global_step] a resumed run repeats its augmentation.

    Args:
        images_uint8: [B, S, S, 3] stored-size images (uint8 or float in [0, 255]).
        seed: shape-[2] integer seed.
        config: what to apply.

    Returns:
        float32 [B, crop_size, crop_size, 3] in [0, 255].
    """
    seed = _as_seed(seed)
    # The same pixels as random_crop, then random_flip, then the vertical random_flip.
    x = _crop_and_flip(images_uint8, _sub_seed(seed, _CROP), config.crop_size, config.pad,
                       flip_seed=_sub_seed(seed, _FLIP) if config.flip else None,
                       vflip_seed=_sub_seed(seed, _VFLIP) if config.vertical_flip else None)
    x = tf.cast(x, tf.float32)
    if config.rotation > 0 or config.scale > 0:
        x = random_rotate_scale(x, _sub_seed(seed, _AFFINE), config.rotation, config.scale)
    if config.pca_std > 0:
        x = pca_jitter(x, _sub_seed(seed, _PCA), config.pca_eigvals, config.pca_eigvecs,
                       config.pca_std)
    if config.noise_std > 0:
        x = gaussian_noise(x, _sub_seed(seed, _NOISE), config.noise_std)
    if config.cutout > 0:
        x = cutout(x, _sub_seed(seed, _CUTOUT), config.cutout)
    return tf.clip_by_value(x, 0.0, 255.0)


def ten_crop(images: tf.Tensor, crop: int) -> tf.Tensor:
    """The four corner crops, the centre crop and their mirrors (§4.1 test-time augmentation).

    Args:
        images: [B, H, W, C] or [H, W, C], H, W >= crop.
        crop: crop side.

    Returns:
        [B, 10, crop, crop, C] (or [10, crop, crop, C]) in the order top-left, top-right,
        bottom-left, bottom-right, centre, then the same five mirrored left-right.
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    h, w = shape[-3], shape[-2]
    crops = [images[..., :crop, :crop, :], images[..., :crop, w - crop:, :],
             images[..., h - crop:, :crop, :], images[..., h - crop:, w - crop:, :],
             preprocess.center_crop(images, crop)]
    static = images.shape.as_list()
    for c in crops:
        c.set_shape(static[:-3] + [crop, crop, static[-1]])
    crops += [tf.reverse(c, axis=[-2]) for c in crops]
    return tf.stack(crops, axis=-4)


def estimate_rgb_pca(images: Iterable, max_images: int = 10000) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of the 3x3 covariance of RGB pixels scaled to [0, 1] (§4.1).

    Args:
        images: a tf.data.Dataset or iterable of uint8 batches [B, H, W, 3], single images
            [H, W, 3], or (images, labels) tuples, e.g. `DataSource.sample_images(n)`.
        max_images: use at most this many images.

    Returns:
        (eigvals float64 [3], descending; eigvecs float64 [3, 3], column i for eigvals[i],
        signed so that each column sums to >= 0). The covariance uses N - 1, like np.cov.

    Raises:
        ValueError: no images, or images without 3 channels.
    """
    shift = 0.5  # centre the sums for accuracy
    n, total, outer, seen = 0, np.zeros(3), np.zeros((3, 3)), 0
    source = images.as_numpy_iterator() if isinstance(images, tf.data.Dataset) else images
    for element in source:
        if isinstance(element, (tuple, list)):
            element = element[0]
        batch = np.asarray(element)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"Expected RGB images [B, H, W, 3] or [H, W, 3]. "
                             f"Received: shape={batch.shape}")
        batch = batch[:max_images - seen]
        seen += len(batch)
        pixels = batch.reshape(-1, 3)
        for start in range(0, len(pixels), 1 << 20):
            chunk = pixels[start:start + (1 << 20)].astype(np.float64) / 255.0 - shift
            total += chunk.sum(axis=0)
            outer += chunk.T @ chunk
            n += len(chunk)
        if seen >= max_images:
            break
    if n < 2:
        raise ValueError("estimate_rgb_pca needs at least one image with two pixels.")
    covariance = (outer - np.outer(total, total) / n) / (n - 1)
    eigvals, eigvecs = np.linalg.eigh(covariance)
    order = np.argsort(eigvals)[::-1]
    eigvals, eigvecs = np.maximum(eigvals[order], 0.0), eigvecs[:, order]
    eigvecs = eigvecs * np.where(eigvecs.sum(axis=0) < 0, -1.0, 1.0)
    return eigvals, eigvecs
