"""The benchmark's building blocks on a tiny batch: what each timed step really runs."""

import numpy as np
import keras

from alexnet_tf import build_alexnet, forward_flops
from alexnet_tf.layers import LocalResponseNormalization
from alexnet_tf import conv_grad
from bench import train


def test_no_lrn_step_is_the_same_network_without_lrn():
    with_lrn, _ = train._real_step("cifar", 3, 4, "decomposed", False)
    without, run = train._real_step("cifar", 3, 4, "none", False)
    assert any(isinstance(layer, LocalResponseNormalization) for layer in with_lrn.layers)
    assert not any(isinstance(layer, LocalResponseNormalization) for layer in without.layers)
    assert without.count_params() == with_lrn.count_params()
    # Identity in place of LRN: the output of the layer before reaches the layer after.
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    probe = keras.Model(without.input, [without.get_layer("conv1").output, without.get_layer("lrn1").output])
    conv1, lrn1 = probe(x)
    np.testing.assert_array_equal(conv1.numpy(), lrn1.numpy())
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    sums = run(images, np.array([0, 1, 2, 0], np.int32))
    assert sums[3] == 4 and np.isfinite(sums[0])


def test_measure_reports_every_step_in_each_precision():
    records = train.measure("cifar", batch=4, reps=1, num_classes=3,
                            precisions=("float32", "mixed_bfloat16"))
    steps = {r["step"]: r for r in records if r["what"] == "train"}
    shares = {r["precision"]: r["share_of_train_step"] for r in records if r["what"] == "lrn_share"}
    speedups = {r["precision"]: r["speedup"] for r in records if r["what"] == "filter_grad_speedup"}
    flops = forward_flops(build_alexnet("cifar", 3))
    matmul_grads = conv_grad.wanted("mixed_bfloat16")  # bfloat16 on a CPU
    assert set(steps) == {"bare", "train_step", "train_step_no_lrn", "train_step_mixed_bfloat16",
                          "train_step_no_lrn_mixed_bfloat16"} | (
                              {"train_step_tf_filter_grad_mixed_bfloat16"} if matmul_grads else set())
    if matmul_grads:
        assert steps["train_step_mixed_bfloat16"]["filter_grad"] == "matmul"
        assert steps["train_step_tf_filter_grad_mixed_bfloat16"]["filter_grad"] == "tf"
        want = (steps["train_step_mixed_bfloat16"]["images_per_second"]
                / steps["train_step_tf_filter_grad_mixed_bfloat16"]["images_per_second"])
        np.testing.assert_allclose(speedups["mixed_bfloat16"], want, rtol=1e-9)
    assert steps["train_step"]["filter_grad"] == "tf"  # float32 keeps TF's kernel gradients
    if matmul_grads:
        assert steps["train_step_no_lrn_mixed_bfloat16"]["filter_grad"] == "matmul"
    assert steps["train_step_mixed_bfloat16"]["precision"] == "mixed_bfloat16"
    assert steps["train_step_no_lrn_mixed_bfloat16"]["precision"] == "mixed_bfloat16"
    assert steps["train_step_no_lrn"]["lrn"] == "none" and steps["train_step"]["lrn"] == "decomposed"
    for precision, suffix in (("float32", ""), ("mixed_bfloat16", "_mixed_bfloat16")):
        want = 1 - steps["train_step" + suffix]["images_per_second"] / steps["train_step_no_lrn" + suffix]["images_per_second"]
        np.testing.assert_allclose(shares[precision], want, rtol=1e-9)
    assert len(records) == len(steps) + len(shares) + len(speedups)
    for r in steps.values():
        assert r["variant"] == "cifar" and r["images_per_second"] > 0
        # GFLOP/s: images/s times 3x the forward FLOPs (forward_flops is checked in test_model).
        np.testing.assert_allclose(r["gflops"], r["images_per_second"] * 3 * flops / 1e9, rtol=1e-9)


def test_filter_grad_option_picks_the_kernel_gradient_form():
    switched = conv_grad.switched_layers
    matmul, _ = train._real_step("cifar", 3, 4, "decomposed", False, "mixed_bfloat16", filter_grad="matmul")
    native, run = train._real_step("cifar", 3, 4, "decomposed", False, "mixed_bfloat16", filter_grad="tf")
    auto32, _ = train._real_step("cifar", 3, 4, "decomposed", False, "float32")
    assert switched(matmul) == ["conv3", "conv4", "conv5"]
    assert switched(native) == [] and switched(auto32) == []
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert np.isfinite(run(images, np.array([0, 1, 2, 0], np.int32))[0])
