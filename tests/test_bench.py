"""The benchmark's building blocks on a tiny batch: what each timed step really runs."""

import os

import numpy as np
import keras

from alexnet_tf import build_alexnet, forward_flops
from alexnet_tf.layers import LocalResponseNormalization
from alexnet_tf import conv_grad
from bench import train
from helpers import needs_bfloat16_kernels


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


@needs_bfloat16_kernels
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
    assert steps["train_step_no_lrn"]["lrn"] == "none" and steps["train_step"]["lrn"] == "fused"  # what train runs
    for precision, suffix in (("float32", ""), ("mixed_bfloat16", "_mixed_bfloat16")):
        want = 1 - steps["train_step" + suffix]["images_per_second"] / steps["train_step_no_lrn" + suffix]["images_per_second"]
        np.testing.assert_allclose(shares[precision], want, rtol=1e-9)
    assert len(records) == len(steps) + len(shares) + len(speedups)
    for r in steps.values():
        assert r["variant"] == "cifar" and r["images_per_second"] > 0
        # GFLOP/s: images/s times 3x the forward FLOPs (forward_flops is checked in test_model).
        np.testing.assert_allclose(r["gflops"], r["images_per_second"] * 3 * flops / 1e9, rtol=1e-9)


@needs_bfloat16_kernels
def test_filter_grad_option_picks_the_kernel_gradient_form():
    switched = conv_grad.switched_layers
    matmul, _ = train._real_step("cifar", 3, 4, "decomposed", False, "mixed_bfloat16", filter_grad="matmul")
    native, run = train._real_step("cifar", 3, 4, "decomposed", False, "mixed_bfloat16", filter_grad="tf")
    auto32, _ = train._real_step("cifar", 3, 4, "decomposed", False, "float32")
    assert switched(matmul) == ["conv3", "conv4", "conv5"]
    assert switched(native) == [] and switched(auto32) == []
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    assert np.isfinite(run(images, np.array([0, 1, 2, 0], np.int32))[0])


def _space(events):
    """A profiler XSpace holding `events` [(line name, event name, picoseconds)] on the host plane."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    space = xplane_pb2.XSpace()
    host = space.planes.add(name="/host:CPU")
    other = space.planes.add(name="/device:GPU:0")
    names = {}
    for line_name, event_name, ps in events:
        meta = names.setdefault(event_name, len(names) + 1)
        host.event_metadata[meta].name = event_name
        other.event_metadata[meta].name = event_name
        for plane in (host, other):
            line = next((l for l in plane.lines if l.name == line_name), None) or plane.lines.add(name=line_name)
            line.events.add(metadata_id=meta, duration_ps=ps)
    return space


def test_op_times_sum_executor_events_of_the_host_plane():
    from bench import profile
    space = _space([
        ("tf_Compute", "model/conv1_1/Conv2D:Conv2D", 3_000_000_000),
        ("tf_Compute", "model/conv1_1/Conv2D:Conv2D", 1_000_000_000),   # twice: summed
        ("tf_Compute", "gradient_tape/model/fc6_1/MatMul:MatMul", 2_000_000_000),
        ("tf_Compute", "ExecutorState::Process:x", 9_000_000_000),       # bookkeeping, not an op
        ("tf_Compute", "no type", 9_000_000_000),                        # not "name:Type"
        ("python", "model/conv1_1/Conv2D:Conv2D", 9_000_000_000),        # not an executor thread
    ])
    times = profile.op_times(space)  # the GPU plane's copies are not counted
    assert times == {("model/conv1_1/Conv2D", "Conv2D"): 4e-3, ("gradient_tape/model/fc6_1/MatMul", "MatMul"): 2e-3}
    by_layer = profile.summarise(times, by="layer", layers={"conv1", "fc6"})
    assert [(r["group"], round(r["ms_per_step"], 9)) for r in by_layer] == [("conv1", 4.0), ("fc6", 2.0)]
    by_type = profile.summarise(times, by="type", top=1)
    assert [r["group"] for r in by_type] == ["Conv2D", "(rest)"]
    np.testing.assert_allclose([r["share"] for r in by_type], [4 / 6, 2 / 6])
    assert profile.layer_of("SGD/update/mul", {"conv1"}) == "SGD"


def test_trace_finds_the_op_a_function_runs():
    import tensorflow as tf
    from bench import profile
    a = tf.random.normal((256, 256))

    @tf.function
    def step():
        return tf.linalg.matmul(a, a, name="the_product")
    times = profile.trace(lambda: step().numpy(), steps=2, warmup=1)
    kinds = {kind for (_, kind) in times}
    assert any("MatMul" in kind for kind in kinds), kinds
    assert all(t >= 0 for t in times.values())


def test_profile_benchmark_names_the_cpu_in_every_record(tmp_path, capsys):
    import json
    from alexnet_tf import cpu_info
    from bench import run
    out = os.path.join(tmp_path, "records.json")
    run.run("profile", ("cifar",), reps=1, batch=4, precision="float32", output=out)
    with open(out) as f:
        records = json.load(f)
    printed = capsys.readouterr().out
    cpu = cpu_info.detect().record()
    assert all({k: r[k] for k in cpu} == cpu for r in records)
    assert f"CPU: {cpu_info.detect().describe()}" in printed
    profiles = [r for r in records if r["what"] == "profile"]
    assert {(r["step"], r["by"]) for r in profiles} == {(s, b) for s in ("bare", "train_step") for b in ("type", "layer")}
    for step in ("bare", "train_step"):
        rows = {by: [r for r in profiles if r["step"] == step and r["by"] == by] for by in ("type", "layer")}
        # The conv layers' forward and backward ops are found among the largest groups.
        layers = {r["group"] for r in rows["layer"]}
        assert len(layers & {f"conv{i}" for i in range(1, 6)}) >= 3, layers
        # Both groupings split the same op time, "(rest)" included.
        np.testing.assert_allclose(sum(r["ms_per_step"] for r in rows["type"]),
                                   sum(r["ms_per_step"] for r in rows["layer"]), rtol=1e-6)
        np.testing.assert_allclose(sum(r["share"] for r in rows["type"]), 1.0, rtol=1e-6)
