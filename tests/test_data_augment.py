"""Tests of the batched device-side augmentation, ten-crop and the RGB PCA estimate."""

import math

import numpy as np
import pytest
import tensorflow as tf

from data_pipeline import augment


def _images(batch, height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def _find(crop, image):
    """All (top, left) where `crop` is an exact slice of `image` (brute force)."""
    size = crop.shape[0]
    return [(t, l) for t in range(image.shape[0] - size + 1)
            for l in range(image.shape[1] - size + 1)
            if np.array_equal(image[t:t + size, l:l + size], crop)]


@pytest.mark.parametrize("height,width,size,pad", [(12, 15, 8, 0), (8, 8, 8, 2)])
def test_random_crop_is_an_exact_slice_at_per_image_offsets(height, width, size, pad):
    images = _images(16, height, width)
    crops = augment.random_crop(images, [3, 7], size, pad).numpy()
    assert crops.shape == (16, size, size, 3) and crops.dtype == np.uint8
    padded = np.pad(images, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    offsets = []
    for crop, image in zip(crops, padded):
        found = _find(crop, image)
        assert len(found) == 1
        offsets.append(found[0])
    assert len(set(offsets)) > 4  # one location per image, not per batch


def test_cifar_crop_pads_with_zeros():
    crops = augment.random_crop(np.full((64, 32, 32, 3), 200, np.uint8), [0, 1], 32, 4).numpy()
    zero_rows = (crops == 0).all(axis=(2, 3)).sum(axis=1)
    assert set(zero_rows) - {0} and zero_rows.max() <= 4   # some shifted, never past the pad
    assert ((crops == 0) | (crops == 200)).all()


def test_forced_flip_is_an_exact_mirror_and_flips_are_per_image():
    images = _images(32, 6, 9)
    np.testing.assert_array_equal(augment.random_flip(images, [1, 2], prob=1.0),
                                  images[:, :, ::-1])
    np.testing.assert_array_equal(augment.random_flip(images, [1, 2], prob=0.0), images)
    np.testing.assert_array_equal(
        augment.random_flip(images, [1, 2], prob=1.0, direction="vertical"), images[:, ::-1])
    out = augment.random_flip(images, [1, 2]).numpy()
    mirrored = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 0 < sum(mirrored) < 32


def test_augment_batch_crops_and_flips_are_exact_slices_of_the_source():
    images = _images(24, 11, 11, seed=3)
    config = augment.AugmentConfig(crop_size=8, pad=2, flip=True, vertical_flip=True)
    out = augment.augment_batch(images, [2, 30], config).numpy()
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)])
    kinds = []
    for crop, image in zip(out.astype(np.uint8), padded):
        variants = {"none": image, "h": image[:, ::-1], "v": image[::-1], "hv": image[::-1, ::-1]}
        found = [k for k, v in variants.items() if _find(crop, v)]
        assert len(found) == 1
        kinds.append(found[0])
    assert set(kinds) == {"none", "h", "v", "hv"}  # independent draws per image and per flip


def test_gaussian_noise_has_the_asked_mean_and_sigma():
    sigma, shape = 10.0, (8, 64, 64, 3)
    noise = augment.gaussian_noise(np.zeros(shape, np.float32), [5, 9], sigma).numpy()
    n = noise.size
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(n)
    assert abs(noise.std() - sigma) < 5 * sigma / math.sqrt(2 * n)
    # Per-image draws: two images of the batch differ.
    assert not np.allclose(noise[0], noise[1])


def test_pca_jitter_moves_each_image_along_the_eigenvectors():
    rotation = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    eigvals = np.array([0.2, 0.02, 0.0])  # nothing may move along the third eigenvector
    images = _images(2000, 2, 3).astype(np.float32)
    out = augment.pca_jitter(images, [4, 4], eigvals, rotation, std=0.1).numpy()
    assert out.shape == images.shape
    delta = (out - images).reshape(len(images), -1, 3) / augment.PCA_PIXEL_SCALE
    # The same 3-vector for every pixel of an image.
    np.testing.assert_allclose(delta, np.broadcast_to(delta[:, :1], delta.shape), atol=2e-6)
    coeffs = delta[:, 0] @ rotation                              # coordinates along p_i
    np.testing.assert_allclose(coeffs[:, 2], 0.0, atol=1e-6)
    np.testing.assert_allclose(delta[:, 0], coeffs[:, :2] @ rotation[:, :2].T, atol=1e-6)
    alphas = coeffs[:, :2] / eigvals[:2]                         # coefficient = alpha * lambda
    n = len(alphas)
    assert np.all(np.abs(alphas.mean(axis=0)) < 5 * 0.1 / math.sqrt(n))
    assert np.all(np.abs(alphas.std(axis=0) - 0.1) < 5 * 0.1 / math.sqrt(2 * n))


def test_estimate_rgb_pca_matches_numpy_cov_and_eigh():
    rng = np.random.default_rng(1)
    mix = np.array([[1.0, 0.8, 0.6], [0.0, 0.5, 0.3], [0.0, 0.0, 0.2]])
    images = np.clip(rng.normal(0.5, 0.15, (10, 6, 7, 3)) @ mix * 255, 0, 255).astype(np.uint8)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(3)
    eigvals, eigvecs = augment.estimate_rgb_pca(dataset, max_images=4)
    pixels = images[:4].reshape(-1, 3).astype(np.float64) / 255.0
    want_vals, want_vecs = np.linalg.eigh(np.cov(pixels, rowvar=False))
    np.testing.assert_allclose(eigvals, want_vals[::-1], rtol=1e-9, atol=1e-12)
    for i in range(3):
        got, want = eigvecs[:, i], want_vecs[:, ::-1][:, i]
        np.testing.assert_allclose(got * np.sign(got @ want), want, atol=1e-8)
    with pytest.raises(ValueError, match="RGB images"):
        augment.estimate_rgb_pca([np.zeros((2, 4, 4, 1), np.uint8)])


def test_config_for_variant_and_bad_configs():
    cifar = augment.AugmentConfig.for_variant("cifar")
    assert (cifar.crop_size, cifar.pad, cifar.flip) == (32, 4, True)
    assert (augment.AugmentConfig.for_variant("paper").crop_size,
            augment.AugmentConfig.for_variant("paper").pad) == (227, 0)
    assert augment.AugmentConfig.for_variant("owt", noise_std=2.0).crop_size == 224
    assert cifar.vertical_flip is False and cifar.rotation == 0 and cifar.scale == 0
    with pytest.raises(ValueError, match="needs `pca_eigvals`"):
        augment.AugmentConfig.for_variant("cifar", pca_std=0.1)
    with pytest.raises(ValueError, match="Unknown AugmentConfig fields"):
        augment.AugmentConfig.for_variant("cifar", crop=3)
    with pytest.raises(ValueError, match="Unknown variant"):
        augment.AugmentConfig.for_variant("vgg")
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="`cutout` must be an integer >= 0"):
            augment.AugmentConfig.for_variant("cifar", cutout=bad)
    with pytest.raises(ValueError, match="shape \\[2\\]"):
        augment.augment_batch(_images(2, 32, 32), [1, 2, 3], cifar)


def _full_config(**overrides):
    values = dict(noise_std=4.0, pca_std=0.1, pca_eigvals=[0.2, 0.02, 0.005],
                  pca_eigvecs=np.eye(3), vertical_flip=True, rotation=10.0, scale=0.1,
                  cutout=8)
    values.update(overrides)
    return augment.AugmentConfig.for_variant("cifar", **values)


def test_augment_batch_is_a_function_of_the_seed():
    images = _images(8, 32, 32)
    config = _full_config()
    a = augment.augment_batch(images, [7, 100], config).numpy()
    assert a.shape == (8, 32, 32, 3) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a, augment.augment_batch(images, [7, 100], config))
    assert not np.allclose(a, augment.augment_batch(images, [7, 101], config))
    assert not np.allclose(a, augment.augment_batch(images, [8, 100], config))
    # Every image gets its own draw: identical inputs give different outputs.
    same = augment.augment_batch(np.repeat(images[:1], 8, axis=0), [7, 100], config).numpy()
    assert len({s.tobytes() for s in same}) == 8


def test_augment_batch_under_xla_matches_eager():
    images = tf.constant(_images(4, 40, 40))
    config = _full_config(rotation=0.0, scale=0.0)
    step = tf.function(lambda x, s: augment.augment_batch(x, s, config), jit_compile=True)
    seed = tf.constant([-3, 12345], tf.int64)
    np.testing.assert_allclose(step(images, seed), augment.augment_batch(images, seed, config),
                               atol=1e-3)
    crop_only = augment.AugmentConfig(crop_size=32)
    step = tf.function(lambda x, s: augment.augment_batch(x, s, crop_only), jit_compile=True)
    np.testing.assert_array_equal(step(images, seed),
                                  augment.augment_batch(images, seed, crop_only))


def _square_of_changes(before, after):
    """The rows and columns where `after` differs from `before`, checked to form one
    axis-aligned rectangle (every pixel inside changed, none outside)."""
    changed = np.any(before != after, axis=-1)
    rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
    assert changed.sum() == len(rows) * len(cols)
    assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    return rows, cols


@pytest.mark.parametrize("size", [1, 4, 5])
def test_cutout_fills_one_clipped_square_per_image_with_its_mean_colour(size):
    height, width = 9, 12
    images = np.random.default_rng(size).uniform(0, 255, (200, height, width, 3)).astype(np.float32)
    out = augment.cutout(images, [4, size], size).numpy()
    starts = set()
    for image, result in zip(images, out):
        rows, cols = _square_of_changes(image, result)
        # Centred on a pixel of the image: side `size` unless cut by a border, and never
        # less than what remains of the square on the image's side of its centre.
        for index, length in ((rows, height), (cols, width)):
            first, last = index[0], index[-1]
            assert len(index) == size or first == 0 or last == length - 1
            assert len(index) >= size - size // 2 and len(index) <= size
        np.testing.assert_allclose(result[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1],
                                   np.broadcast_to(image.mean(axis=(0, 1)),
                                                   (len(rows), len(cols), 3)), rtol=1e-5)
        starts.add((rows[0], cols[0]))
    assert len(starts) > 40   # per-image places, clipped ones among them
    assert any(r == 0 for r, _ in starts) and any(c == 0 for _, c in starts)
    np.testing.assert_array_equal(augment.cutout(images, [4, size], 0), images)


def test_augment_batch_cutout_is_a_square_of_the_uncut_images_mean():
    images = _images(16, 32, 32, seed=5)
    seed = [9, 77]
    # Without noise and colour jitter nothing leaves [0, 255], so the final clip (after the
    # cutout) changes nothing and the mean is that of the uncut output.
    in_range = dict(noise_std=0.0, pca_std=0.0)
    plain = augment.augment_batch(images, seed, _full_config(cutout=0, **in_range)).numpy()
    cut = augment.augment_batch(images, seed, _full_config(cutout=10, **in_range)).numpy()
    for before, after in zip(plain, cut):
        rows, cols = _square_of_changes(before, after)
        assert 1 <= len(rows) <= 10 and 1 <= len(cols) <= 10
        np.testing.assert_allclose(after[rows[0], cols[0]], before.mean(axis=(0, 1)), rtol=1e-4)


def test_rotate_scale_matches_rot90_and_a_ramp():
    images = _images(2, 7, 7).astype(np.float32)
    out = augment.rotate_scale(images, tf.constant([0.0, math.pi / 2]), tf.constant([1.0, 1.0]))
    np.testing.assert_array_equal(out[0], images[0])
    np.testing.assert_allclose(out[1], np.rot90(images[1]), atol=1e-3)
    # Zooming by s about the centre maps column x to c + (x - c) / s; bilinear is exact on a ramp.
    ramp = np.broadcast_to(np.arange(9, dtype=np.float32)[None, :, None], (9, 9, 3))[None]
    zoomed = augment.rotate_scale(ramp, tf.constant([0.0]), tf.constant([2.0])).numpy()[0]
    np.testing.assert_allclose(zoomed[4, :, 0], 4 + (np.arange(9) - 4) / 2, atol=1e-5)


def test_ten_crop_geometry():
    images = _images(2, 10, 12)
    crops = augment.ten_crop(images, 6).numpy()
    assert crops.shape == (2, 10, 6, 6, 3)
    want = [images[:, :6, :6], images[:, :6, 6:], images[:, 4:, :6], images[:, 4:, 6:],
            images[:, 2:8, 3:9]]
    want += [w[:, :, ::-1] for w in want]
    for i, expected in enumerate(want):
        np.testing.assert_array_equal(crops[:, i], expected)
    single = augment.ten_crop(images[1], 6).numpy()
    np.testing.assert_array_equal(single, crops[1])
