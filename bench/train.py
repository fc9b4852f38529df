"""Training-step throughput: the `train` command's real step beside the bare model, same run.

The real step is `alexnet_tf.train_step.make_replica_step` (augmentation, the paper's
L2, metrics) with the per-step host work of the loop (learning-rate assign, metric
fetch). The bare step is forward, loss, backward and SGD momentum on a ready float
batch with TF's builtin LRN — what a minimal script measures.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras

from alexnet_tf import build_alexnet, conv_grad, forward_flops
from alexnet_tf.model import VARIANTS
from alexnet_tf.layers import LocalResponseNormalization
from alexnet_tf.optimizer import FusedMomentumSGD
from alexnet_tf.config import TrainConfig
from alexnet_tf.train_step import make_replica_step
from bench.common import median, time_calls
from data_pipeline import preprocess

TRAIN_LRN = TrainConfig.lrn_implementation  # the LRN form `train` uses by default


def _bare_step(model, optimizer, x, y):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss
    return lambda: step().numpy()


def _real_step(variant, num_classes, batch, lrn, jit, precision="float32", filter_grad="auto"):
    """The train command's step; `filter_grad` "auto" (as `train`), "matmul" or "tf"."""
    from data_pipeline.augment import AugmentConfig
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_alexnet(variant, num_classes, seed=0,
                              lrn_implementation="builtin" if lrn == "none" else lrn)
        if lrn == "none":  # the same network with each LRN layer replaced by the identity
            model = keras.models.clone_model(
                model, clone_function=lambda layer: keras.layers.Identity(name=layer.name)
                if isinstance(layer, LocalResponseNormalization) else layer.__class__.from_config(layer.get_config()))
    finally:
        keras.mixed_precision.set_global_policy(policy)
    if filter_grad == "matmul" or (filter_grad == "auto" and conv_grad.wanted(precision)):
        conv_grad.use_matmul_filter_grad(model)  # as the train command does
    optimizer = FusedMomentumSGD(TrainConfig.learning_rate, momentum=TrainConfig.momentum,
                                 coupled_decay=TrainConfig.weight_decay)  # as the train command
    optimizer.build(model.trainable_variables)
    # PCA jitter on with a plausible RGB eigen-decomposition; the real run estimates its own.
    aug = AugmentConfig.for_variant(variant, pca_std=0.1, pca_eigvals=(0.2175, 0.0188, 0.0045),
                                    pca_eigvecs=((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140),
                                                 (-0.5836, -0.6948, 0.4203)))
    inner = tf.function(make_replica_step(model, optimizer, variant=variant, global_batch=batch,
                                          top_k=min(5, num_classes), augment=aug),
                        jit_compile=jit)
    counter = {"step": 0}

    def run(images, labels):
        optimizer.learning_rate.assign(0.01)
        sums = inner(images, labels, tf.constant(counter["step"], tf.int64))
        counter["step"] += 1
        return sums.numpy()
    return model, run


def _synthetic_batch(variant: str, batch: int, num_classes: int):
    """(uint8 images as stored, labels, the float centre crops the bare model takes)."""
    stored, crop = preprocess.geometry(variant)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (batch, stored, stored, 3), dtype=np.uint8))
    labels = tf.constant(rng.integers(0, num_classes, (batch,)), tf.int32)
    return images, labels, preprocess.center_crop(tf.cast(images, tf.float32), crop)


def profile(variant: str, batch: int = 128, num_classes: int | None = None, precision: str = "float32",
            steps: int = 3, top: int = 12) -> list:
    """Op-level time per step of the bare step and of the train command's step (`bench.profile`).

    Returns:
        `what="profile"` records: for each step ("bare", "train_step") and grouping
        ("type", "layer"), the largest groups with their milliseconds per step.
    """
    from bench import profile as prof
    num_classes = num_classes or (10 if variant == "cifar" else 1000)
    images, labels, x = _synthetic_batch(variant, batch, num_classes)
    bare_model = build_alexnet(variant, num_classes, seed=0, lrn_implementation="builtin")
    bare = _bare_step(bare_model, keras.optimizers.SGD(0.01, momentum=0.9), x, labels)
    _, real = _real_step(variant, num_classes, batch, TRAIN_LRN, False, precision)
    layers = {layer.name for layer in bare_model.layers}
    records = []
    for step, fn in (("bare", bare), ("train_step", lambda: real(images, labels))):
        times = prof.trace(fn, steps=steps)
        for by in ("type", "layer"):
            for row in prof.summarise(times, by=by, top=top, layers=layers):
                records.append({"what": "profile", "variant": variant, "step": step, "by": by,
                                "precision": "float32" if step == "bare" else precision, **row})
    return records


def _filter_grad(model) -> str:
    """"matmul" when `conv_grad.use_matmul_filter_grad` switched layers of the model, else "tf"."""
    return "matmul" if conv_grad.switched_layers(model) else "tf"


def measure(variant: str, batch: int = 128, reps: int = 5, num_classes: int | None = None,
            lrn: str = TRAIN_LRN, jit: bool = False, source=None, peak_gflops: float | None = None,
            precisions=("float32",)) -> list:
    """Images/second of the bare step and of the real train step, interleaved.

    Args:
        variant: model variant.
        batch: batch size.
        reps: timed steps per form (median reported).
        num_classes: classes (default: the variant's).
        lrn: LRN implementation of the real step.
        jit: XLA for the real step.
        source: a `DataSource` to also time the real step fed by its tf.data pipeline.
        peak_gflops: the machine's matmul peak, for the share column.
        precisions: the real step is timed in each of these dtype policies (the first
            one also fed by `source`); the bare step is float32.

    Returns:
        Benchmark records (dicts): one `what="train"` record per timed step and, for
        variants with LRN layers, one `what="lrn_share"` record per precision (the
        LRN layers' share of the real step's time); where the train command computes
        kernel gradients as matmuls (`alexnet_tf.conv_grad`), the same step with TF's
        kernel gradients and a `what="filter_grad_speedup"` record.
    """
    num_classes = num_classes or (10 if variant == "cifar" else 1000)
    images, labels, x = _synthetic_batch(variant, batch, num_classes)

    bare_model = build_alexnet(variant, num_classes, seed=0, lrn_implementation="builtin")
    bare_opt = keras.optimizers.SGD(0.01, momentum=0.9)
    fns = {"bare": _bare_step(bare_model, bare_opt, x, labels)}
    precision_of = {"bare": "float32"}
    lrn_pairs = []  # (precision, the real step, the same step without LRN)
    grad_pairs = []  # (precision, the real step, the same step with TF's kernel gradients)
    filter_grad_of = {}
    for i, precision in enumerate(precisions):
        model, real = _real_step(variant, num_classes, batch, lrn, jit, precision)
        suffix = "" if i == 0 else f"_{precision}"
        fns["train_step" + suffix] = lambda real=real: real(images, labels)
        precision_of["train_step" + suffix] = precision
        filter_grad_of["train_step" + suffix] = _filter_grad(model)
        if filter_grad_of["train_step" + suffix] == "matmul":
            # The train command's matmul kernel gradients beside TF's own, same step otherwise.
            _, native = _real_step(variant, num_classes, batch, lrn, jit, precision, filter_grad="tf")
            fns["train_step_tf_filter_grad" + suffix] = lambda native=native: native(images, labels)
            precision_of["train_step_tf_filter_grad" + suffix] = precision
            grad_pairs.append((precision, "train_step" + suffix, "train_step_tf_filter_grad" + suffix))
        if source is not None and i == 0:
            it = iter(source.train_dataset(batch, epoch=0).repeat())
            fns["train_step_data"] = lambda real=real: real(*next(it))
            precision_of["train_step_data"] = precision
            filter_grad_of["train_step_data"] = _filter_grad(model)
        if VARIANTS[variant].use_lrn:
            # The LRN layers' share of the step: the same step with identities in their place.
            no_lrn_model, no_lrn = _real_step(variant, num_classes, batch, "none", jit, precision)
            filter_grad_of["train_step_no_lrn" + suffix] = _filter_grad(no_lrn_model)
            fns["train_step_no_lrn" + suffix] = lambda no_lrn=no_lrn: no_lrn(images, labels)
            precision_of["train_step_no_lrn" + suffix] = precision
            lrn_pairs.append((precision, "train_step" + suffix, "train_step_no_lrn" + suffix))
    times = time_calls(fns, reps, warmup=2)
    train_flops = 3 * forward_flops(model)
    records = []
    bare_ips = batch / median(times["bare"])
    for name, ts in times.items():
        ips = batch / median(ts)
        gflops = ips * train_flops / 1e9
        records.append({
            "what": "train", "variant": variant, "step": name, "batch": batch,
            "lrn": "builtin" if name == "bare" else "none" if name.startswith("train_step_no_lrn") else lrn,
            "jit": jit and name != "bare",
            "data": "cifar10-jpg" if name == "train_step_data" else "synthetic",
            "precision": precision_of[name],
            "filter_grad": filter_grad_of.get(name, "tf"),  # bare: TF's
            "images_per_second": ips, "vs_bare": ips / bare_ips, "gflops": gflops,
            "share_of_peak": gflops / peak_gflops if peak_gflops else None,
            "median_ms": median(ts) * 1e3, "reps": reps,
        })
    for precision, with_lrn, without in lrn_pairs:
        # 1 - (images/s with LRN) / (images/s without) = 1 - t_without / t_with.
        records.append({"what": "lrn_share", "variant": variant, "precision": precision,
                        "share_of_train_step": 1.0 - median(times[without]) / median(times[with_lrn])})
    for precision, matmul, native in grad_pairs:
        records.append({"what": "filter_grad_speedup", "variant": variant, "precision": precision,
                        "speedup": median(times[native]) / median(times[matmul])})
    return records
