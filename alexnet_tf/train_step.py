"""One training step and the batches it runs on: augmentation, forward, loss and the SGD
update on each replica, summed over the replicas of a tf.distribute strategy."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import keras

from alexnet_tf.config import TrainConfig
from data_pipeline import preprocess


def use_jit(config: TrainConfig) -> bool:
    """Whether the replica step is XLA-compiled: --jit_compile, where "auto" means on GPUs."""
    if config.jit_compile == "auto":
        # Measured slower than TF's graph mode with oneDNN on CPUs; a win on GPUs.
        return bool(tf.config.list_logical_devices("GPU"))
    return config.jit_compile == "true"


def split_normalization(model: keras.Model):
    """The model after its `normalize` layer, and that layer's arithmetic as a function.

    The augmenting train step normalises inside its XLA augmentation (one pass over the
    pixels instead of the layer's two unfused ops) and runs the rest of the model on the
    result. The trunk shares the model's layers and weights; the model itself, and
    so every export, keeps its `normalize` layer. A model without one is returned whole.
    """
    try:
        layer = model.get_layer("normalize")
    except ValueError:
        return model, lambda x: x
    # The configured float statistics: under mixed precision the layer's own copies are rounded.
    config = layer.get_config()
    mean = np.asarray(layer.mean if config["mean"] is None else config["mean"], np.float32).reshape(-1)
    var = np.asarray(layer.variance if config["variance"] is None else config["variance"], np.float32)
    std = np.maximum(np.sqrt(var.reshape(-1)), keras.backend.epsilon())
    return keras.Model(layer.output, model.output, name=f"{model.name}_trunk"), lambda x: (x - mean) / std


def augment_seed(seed: int, seed_offset: int, replica_id, step):
    """The stateless seed of a replica's augmentation draws at `step`:
    [seed * 1000003 + seed_offset + replica id, step]."""
    stream = tf.constant(seed * 1000003 + seed_offset, tf.int64) + tf.cast(replica_id, tf.int64)
    return tf.stack([stream, tf.cast(step, tf.int64)])


def augmented_view(images, step: int, augment, *, seed: int, seed_offset: int = 0) -> tf.Tensor:
    """The pixels (in [0, 255], before normalisation) that the train step feeds the model
    for the batch `images` of the first replica at `step`: the same draws, for pictures.

    Runs eagerly (once an epoch: no compilation); the step's XLA arithmetic may differ from
    it by a rounding.
    """
    from data_pipeline.augment import augment_batch
    return augment_batch(images, augment_seed(seed, seed_offset, 0, step), augment)


def make_replica_step(model: keras.Model, optimizer, *, variant: str, global_batch: int,
                      top_k: int, label_smoothing: float = 0.0,
                      augment=None, seed: int = 0,
                      seed_offset: int = 0):
    """The per-replica train step: augmentation, forward, loss, the SGD update, metrics.

    Args:
        model: the AlexNet being trained.
        optimizer: a `FusedMomentumSGD` (the paper's update and weight decay) or another
            Keras optimizer, possibly inside a LossScaleOptimizer.
        variant: model variant (the eval crop when `augment` is None).
        global_batch: images per step over all replicas (the loss is their mean).
        top_k: k of the top-k accuracy.
        label_smoothing: eps of the training loss's targets (1 - eps) * one_hot + eps / classes.
        augment: an `AugmentConfig`, or None for the deterministic centre crop.
        seed, seed_offset: augmentation draws use the stateless seed
            [seed * 1000003 + seed_offset + replica id, step].

    Returns:
        `step(images_uint8, labels, step) -> float64 [4]`: summed loss, top-1 hits,
        top-k hits and image count of the replica's batch.
    """
    net = model
    if augment is not None:
        from data_pipeline.augment import augment_batch
        net, normalize = split_normalization(model)

        # XLA fuses the per-image gathers and colour arithmetic: ~8x faster than the plain
        # graph at the paper's 256->227 crops on a CPU. Inside an XLA train step it is inlined.
        @tf.function(jit_compile=True)
        def augment_fn(images, aug_seed):
            return normalize(augment_batch(images, aug_seed, augment))

    def replica_step(images, labels, step):
        replica_id = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int64)
        if augment is not None:
            x = augment_fn(images, augment_seed(seed, seed_offset, replica_id, step))
        else:
            x = preprocess.eval_images(images, variant)
        variables = model.trainable_variables
        # Only the trainable variables are watched, so frozen layers record no gradient ops.
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch([v.value for v in variables])
            logits = tf.cast(net(x, training=True), tf.float32)
            if label_smoothing:
                targets = tf.one_hot(tf.cast(labels, tf.int32), tf.shape(logits)[-1])
                per_example = keras.losses.categorical_crossentropy(
                    targets, logits, from_logits=True, label_smoothing=label_smoothing)
            else:
                per_example = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        # LossScaleOptimizer unscales and skips steps with non-finite gradients; the
        # optimizer adds the weight decay to the replica-summed gradients.
        optimizer.apply_gradients(zip(grads, variables))
        labels = tf.cast(labels, tf.int32)
        top1 = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float64))
        topk = tf.reduce_sum(tf.cast(tf.nn.in_top_k(labels, logits, top_k), tf.float64))
        n = tf.cast(tf.shape(labels)[0], tf.float64)
        return tf.stack([tf.cast(tf.reduce_sum(per_example), tf.float64), top1, topk, n])

    return replica_step


def make_train_step(strategy: tf.distribute.Strategy, replica_step, *, average=None,
                    jit_compile: bool = False):
    """The step of the whole run: `replica_step` on every replica of `strategy`, the update
    of the weight average (if any), and the replicas' sums added up.

    Returns:
        `step(images, labels, step) -> float64 [4]`, the sums of `make_replica_step`
        over the global batch.
    """
    compiled_step = tf.function(replica_step, jit_compile=jit_compile, reduce_retracing=True)

    @tf.function
    def train_step(images, labels, step):
        sums = strategy.run(compiled_step, args=(images, labels, step))
        if average is not None:
            average.update(step + 1)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)

    return train_step


def epoch_dataset(strategy, source, global_batch: int, epoch: int, skip: int, steps: int,
                  local_replicas: int):
    """One epoch's batches from step `skip` on, split over the strategy's replicas.

    Global batch k is the concatenation of the replicas' batches k, so every
    topology sees the same images in the same steps as a single device.
    """
    if strategy.num_replicas_in_sync == 1:
        return source.train_dataset(global_batch, epoch, skip_batches=skip).take(steps)

    def dataset_fn(ctx: tf.distribute.InputContext):
        per_replica = ctx.get_per_replica_batch_size(global_batch)
        ds = source.train_dataset(per_replica, epoch, skip_batches=skip * local_replicas,
                                  num_shards=ctx.num_input_pipelines, shard_index=ctx.input_pipeline_id)
        return ds.take(steps * local_replicas)

    return strategy.distribute_datasets_from_function(dataset_fn)
