"""The AlexNet builders: shapes, parameter counts, FLOPs, the paper's init, serialisation."""

import os

import numpy as np
import pytest
import keras

from alexnet_tf import build_alexnet, forward_flops

# (name, kernel, in_channels, filters, groups) per conv; fc widths — written out from the papers.
PAPER_CONVS = [("conv1", 11, 3, 96, 1), ("conv2", 5, 96, 256, 2), ("conv3", 3, 256, 384, 1),
               ("conv4", 3, 384, 384, 2), ("conv5", 3, 384, 256, 2)]
OWT_CONVS = [("conv1", 11, 3, 64, 1), ("conv2", 5, 64, 192, 1), ("conv3", 3, 192, 384, 1),
             ("conv4", 3, 384, 256, 1), ("conv5", 3, 256, 256, 1)]
CIFAR_CONVS = [("conv1", 3, 3, 64, 1), ("conv2", 3, 64, 192, 1), ("conv3", 3, 192, 384, 1),
               ("conv4", 3, 384, 256, 1), ("conv5", 3, 256, 256, 1)]


def expected_params(convs, flat, fc, classes, groups=1):
    total = 0
    for _, k, c_in, c_out, g in convs:
        g = g if groups == 2 else 1
        total += k * k * (c_in // g) * c_out + c_out
    return total + (flat * fc + fc) + (fc * fc + fc) + (fc * classes + classes)


def spatial(model):
    return {layer.name: layer.output.shape[1] for layer in model.layers
            if layer.name[:4] in ("conv", "lrn1", "lrn2", "pool") and not layer.name.endswith("_pad")}


def test_paper_shapes_and_params():
    model = build_alexnet("paper", 1000)
    assert model.input_shape == (None, 227, 227, 3)
    assert spatial(model) == {"conv1": 55, "lrn1": 55, "pool1": 27, "conv2": 27, "lrn2": 27,
                              "pool2": 13, "conv3": 13, "conv4": 13, "conv5": 13, "pool5": 6}
    assert model.get_layer("fc6").input.shape[-1] == 6 * 6 * 256
    assert model.output_shape == (None, 1000)
    assert model.count_params() == expected_params(PAPER_CONVS, 9216, 4096, 1000) == 62_378_344


def test_paper_two_towers():
    model = build_alexnet("paper", 1000, groups=2)
    assert model.count_params() == expected_params(PAPER_CONVS, 9216, 4096, 1000, groups=2)
    assert model.get_layer("conv2").kernel.shape == (5, 5, 48, 256)   # half the input channels
    assert model.get_layer("conv3").kernel.shape == (3, 3, 256, 384)  # conv3 sees both towers
    assert model.get_layer("conv4").kernel.shape == (3, 3, 192, 384)


def test_owt_shapes_and_params():
    model = build_alexnet("owt", 1000)
    assert model.input_shape == (None, 224, 224, 3)
    assert spatial(model) == {"conv1": 55, "pool1": 27, "conv2": 27, "pool2": 13, "conv3": 13,
                              "conv4": 13, "conv5": 13, "pool5": 6}
    assert not any("lrn" in layer.name for layer in model.layers)
    assert model.count_params() == expected_params(OWT_CONVS, 9216, 4096, 1000) == 61_100_840


def test_cifar_shapes_and_params():
    model = build_alexnet("cifar", 10)
    assert model.input_shape == (None, 32, 32, 3)
    assert spatial(model) == {"conv1": 32, "lrn1": 32, "pool1": 15, "conv2": 15, "lrn2": 15,
                              "pool2": 7, "conv3": 7, "conv4": 7, "conv5": 7, "pool5": 3}
    assert model.count_params() == expected_params(CIFAR_CONVS, 3 * 3 * 256, 1024, 10)


def test_layer_names_follow_the_paper():
    names = {layer.name for layer in build_alexnet("paper", 5).layers}
    assert {"conv1", "conv2", "conv3", "conv4", "conv5", "lrn1", "lrn2", "pool1", "pool2", "pool5",
            "dropout6", "fc6", "dropout7", "fc7", "fc8"} <= names


def test_forward_flops_from_shapes():
    # 2 * multiply-adds: out_h * out_w * out_c * k * k * in_c / groups for convs, in * out for dense.
    convs = [(32, 64, 3, 3), (15, 192, 3, 64), (7, 384, 3, 192), (7, 256, 3, 384), (7, 256, 3, 256)]
    macs = sum(s * s * c * k * k * ci for s, c, k, ci in convs) + 2304 * 1024 + 1024 * 1024 + 1024 * 10
    assert forward_flops(build_alexnet("cifar", 10)) == 2 * macs
    paper = [(55, 96, 11, 3), (27, 256, 5, 48), (13, 384, 3, 256), (13, 384, 3, 192), (13, 256, 3, 192)]
    macs = sum(s * s * c * k * k * ci for s, c, k, ci in paper) + 9216 * 4096 + 4096 * 4096 + 4096 * 1000
    assert forward_flops(build_alexnet("paper", 1000, groups=2)) == 2 * macs


def test_paper_init():
    model = build_alexnet("paper", 1000, init="paper", seed=1)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        layer = model.get_layer(name)
        w = np.asarray(layer.kernel)
        assert abs(w.std() - 0.01) < 0.0005, name
        assert abs(w.mean()) < 0.0005, name
        bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        np.testing.assert_array_equal(np.asarray(layer.bias), np.full(layer.bias.shape, bias), err_msg=name)


def test_he_init_is_the_cifar_default():
    model = build_alexnet("cifar", 10, seed=2)
    w = np.asarray(model.get_layer("conv3").kernel)  # fan_in = 3*3*192
    assert abs(w.std() - np.sqrt(2.0 / (3 * 3 * 192))) < 0.05 * np.sqrt(2.0 / (3 * 3 * 192))
    assert not np.asarray(model.get_layer("conv2").bias).any()


def test_keras_file_round_trip(tmp_path):
    model = build_alexnet("cifar", 4, seed=3)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(reloaded(x)), np.asarray(model(x)))
    assert [l.name for l in reloaded.layers] == [l.name for l in model.layers]


def test_normalisation_is_inside_the_model():
    # Constant input at the dataset mean normalises to zeros: the first conv sees only its bias.
    model = build_alexnet("cifar", 3, mean=(100.0, 50.0, 20.0), std=(2.0, 2.0, 2.0))
    x = np.broadcast_to(np.array([100.0, 50.0, 20.0], np.float32), (1, 32, 32, 3))
    normalised = keras.Model(model.input, model.get_layer("normalize").output)(x)
    np.testing.assert_allclose(np.asarray(normalised), 0.0, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"variant": "vgg"}, "variant='vgg'"),
    ({"variant": "cifar", "num_classes": 1}, "num_classes=1"),
    ({"variant": "cifar", "groups": 3}, "groups=3"),
    ({"variant": "cifar", "init": "zeros"}, "init='zeros'"),
    ({"variant": "cifar", "dropout": 1.0}, "dropout=1.0"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_alexnet(**kwargs)
