"""Training: the paper's recipe (§5) as a custom loop on tf.distribute, with exact resume.

The loop is written by hand rather than with `Model.fit` so that one code path
serves one device, several local GPUs and several workers, and so that a
checkpoint holds everything a resumed run needs: weights, optimizer slots,
dropout RNG state, schedule state, epoch and step. The data order and the
augmentation draws are functions of (seed, epoch, step), so they need no state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

import numpy as np
import tensorflow as tf
import keras
from absl import logging

from alexnet_tf import conv_grad, cpu_info, finetune, run_log, rundir
from alexnet_tf.config import TrainConfig
from alexnet_tf.averaging import WeightAverage, swapped_in
from alexnet_tf.distribute import bfloat16_emulated, make_strategy, resolve_precision, split_cpu
from alexnet_tf.evaluation import evaluate_dataset
from alexnet_tf.model import build_alexnet
from alexnet_tf.optimizer import FusedMomentumSGD
from alexnet_tf.schedule import LearningRate
from alexnet_tf.train_step import epoch_dataset, make_replica_step, make_train_step, use_jit

# Options that must match for a run to resume from a checkpoint.
RESUME_KEYS = ("variant", "num_classes", "model_kwargs", "weight_average", "trainable_from")


def check_model_dir(model_dir: str) -> None:
    """Creates `model_dir` or raises a clear error when it cannot hold a run."""
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise NotADirectoryError(f"--model_dir={model_dir!r} is a file; give a folder for the run.")
    try:
        os.makedirs(model_dir, exist_ok=True)
    except OSError as e:
        raise PermissionError(f"Cannot create --model_dir={model_dir!r}: {e.strerror}.") from None
    if not os.access(model_dir, os.W_OK | os.X_OK):
        raise PermissionError(f"--model_dir={model_dir!r} is not writable.")


def _run_info(config: TrainConfig, source, num_classes: int, init: finetune.InitSource | None) -> dict:
    model_kwargs = {"groups": config.groups, "init": config.init, "dropout": config.dropout}
    if init is not None:  # the architecture and the input normalisation travel with the weights
        model_kwargs["groups"] = init.model_kwargs.get("groups", 1)
        model_kwargs.update({k: init.model_kwargs[k] for k in ("mean", "std") if k in init.model_kwargs})
    return {
        "variant": config.model,
        "num_classes": num_classes,
        "class_names": list(source.class_names),
        "model_kwargs": model_kwargs,
        # The checkpoint holds the averaged weights only when averaging is on.
        "weight_average": config.ema_decay or None,
        "trainable_from": config.trainable_from,
        "init_from": None if init is None else init.record(),
        "dataset": config.dataset,
        "data_dir": os.path.abspath(config.data_dir) if config.data_dir else None,
        "config": dataclasses.asdict(config),
    }


def _check_resumable(old: dict, new: dict, model_dir: str) -> None:
    for key in RESUME_KEYS:
        if old.get(key) != new.get(key):
            raise ValueError(
                f"--model_dir={model_dir!r} holds a run with {key}={old.get(key)!r}, but this run "
                f"asks for {key}={new.get(key)!r}. Use another --model_dir, or the same settings "
                "to resume.")


class _Progress:
    """Keras' progress bar on the chief only."""

    def __init__(self, total: int, enabled: bool):
        self.bar = keras.utils.Progbar(total, stateful_metrics=["loss", "top1", "lr"]) if enabled else None

    def update(self, step: int, values):
        if self.bar is not None:
            self.bar.update(step, values)


class ClusterError(ConnectionError):
    """Another worker of a multi-worker run stopped or cannot be reached."""


# What a worker sees when a peer dies mid-step (collectives aborted by the health check).
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.DeadlineExceededError,
                tf.errors.AbortedError)


def train(config: TrainConfig) -> dict:
    """Trains (or resumes) a run in `config.model_dir`; see `_train`. Restores the global dtype policy.

    Raises:
        ClusterError: in a multi-worker run, when another worker is lost.
    """
    policy = keras.mixed_precision.global_policy()
    if config.model_dir is None:
        variant = config.model or finetune.read_init_source(config.init_from).variant if config.init_from else config.model
        config = dataclasses.replace(config, model_dir=os.path.join("runs", f"{variant}-{config.dataset}"))
    try:
        return _train(config)
    except _PEER_ERRORS as e:
        if config.strategy != "multi_worker":
            raise
        first_line = (e.message or type(e).__name__).strip().splitlines()[0][:300]
        raise ClusterError(
            f"Lost another worker of the cluster ({type(e).__name__}: {first_line}). Nothing is lost: "
            f"restart every worker with the same flags and TF_CONFIG, and training resumes from "
            f"the chief's last checkpoint in {os.path.join(config.model_dir, rundir.CHECKPOINT_DIR)} "
            "(use --checkpoint_every_steps to lose fewer steps).") from None
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _train(config: TrainConfig) -> dict:
    """Trains (or resumes) a run in `config.model_dir`.

    Returns:
        The run summary (also written to MODEL_DIR/summary.json).

    Raises:
        ValueError: on conflicting settings or data problems; FloatingPointError
        when the loss stops being finite (the last good checkpoint is kept).
    """
    from data_pipeline import augment as aug

    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)

    resuming = tf.train.latest_checkpoint(os.path.join(config.model_dir, rundir.CHECKPOINT_DIR)) is not None
    init = finetune.resolve_init_source(config, resuming)
    config = finetune.with_variant(config, init)
    if config.cpu_devices > 1:
        split_cpu(config.cpu_devices)
    strategy, is_chief, num_workers, worker_index = make_strategy(config.strategy)
    precision, why = _set_precision(config.precision)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"--batch_size={config.batch_size} is not divisible by the "
                         f"{replicas} replicas of --strategy={config.strategy}.")
    model_dir = config.model_dir if is_chief else rundir.worker_dir(config.model_dir, worker_index)
    check_model_dir(model_dir)

    source = _load_source(config, verbose=bool(config.verbose) and is_chief)
    num_classes = len(source.class_names)
    if config.verbose and is_chief:
        print(f"Precision: {precision} ({why}); {replicas} replica(s) of {strategy.__class__.__name__}; "
              f"oneDNN {cpu_info.onednn_description()}.")

    info = _run_info(config, source, num_classes, init)
    info_path = os.path.join(config.model_dir, rundir.RUN_INFO)
    if os.path.isfile(info_path):
        _check_resumable(rundir.read_run_info(config.model_dir), info, config.model_dir)
    if is_chief:
        rundir.write_run_info(config.model_dir, info)

    full_steps = source.num_train // config.batch_size
    if full_steps == 0:
        raise ValueError(f"--batch_size={config.batch_size} is larger than the training split "
                         f"({source.num_train} images).")
    steps_per_epoch = min(full_steps, config.steps_per_epoch) if config.steps_per_epoch else full_steps

    pca = _pca(config, source, model_dir if is_chief else config.model_dir) if config.pca_std else None
    aug_config = aug.AugmentConfig.for_variant(
        config.model, flip=config.flip, noise_std=config.noise_std, pca_std=config.pca_std,
        cutout=config.cutout, pca_eigvals=None if pca is None else tuple(pca["eigvals"]),
        pca_eigvecs=None if pca is None else tuple(map(tuple, pca["eigvecs"])))

    with strategy.scope():
        model = build_alexnet(config.model, num_classes, seed=config.seed,
                              lrn_implementation=config.lrn_implementation,
                              **info["model_kwargs"])
        finetune.start_from(model, init, source.class_names, config, resuming=resuming, verbose=is_chief)
        if conv_grad.wanted(precision, strategy):
            switched = conv_grad.use_matmul_filter_grad(model)
            if switched and config.verbose and is_chief:
                print(f"Kernel gradients of {', '.join(switched)} as bfloat16 matmuls (faster on CPUs).")
        optimizer = FusedMomentumSGD(learning_rate=config.learning_rate, momentum=config.momentum,
                                     coupled_decay=config.weight_decay)
        if precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        average = WeightAverage(model.trainable_variables, config.ema_decay) if config.ema_decay else None
        schedule = LearningRate(config, steps_per_epoch)
        epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        # Training metrics of the epoch in progress: loss sum, top-1 hits, top-5 hits, images.
        epoch_sums = tf.Variable(tf.zeros([4], tf.float64), trainable=False, name="epoch_sums")

    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer,
        rng_states=[v.value for v in model.non_trainable_variables],
        epoch=epoch_var, step_in_epoch=step_in_epoch, global_step=global_step,
        epoch_sums=epoch_sums, lr_scale=schedule.scale, best_val=schedule.best_val,
        bad_epochs=schedule.bad_epochs, lr_drops=schedule.drops,
        **({"weight_average": average.shadows} if average is not None else {}))
    manager = tf.train.CheckpointManager(checkpoint, os.path.join(model_dir, rundir.CHECKPOINT_DIR),
                                         max_to_keep=config.keep_checkpoints)
    latest = tf.train.latest_checkpoint(os.path.join(config.model_dir, rundir.CHECKPOINT_DIR))
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("Resumed from %s (epoch %d, step %d of the epoch).", latest,
                     int(epoch_var.numpy()) + 1, int(step_in_epoch.numpy()))
        if config.verbose:
            print(f"Resuming from {latest}: epoch {int(epoch_var.numpy()) + 1}, "
                  f"step {int(step_in_epoch.numpy())} of {steps_per_epoch}.")

    replica_step = make_replica_step(
        model, optimizer, variant=config.model, global_batch=config.batch_size, top_k=min(5, num_classes),
        label_smoothing=config.label_smoothing, augment=aug_config if config.augment else None,
        seed=config.seed, seed_offset=worker_index * (replicas // num_workers))
    train_step = make_train_step(strategy, replica_step, average=average, jit_compile=use_jit(config))

    csv_path = os.path.join(model_dir, rundir.LOG_CSV)
    writer = tf.summary.create_file_writer(os.path.join(model_dir, rundir.TENSORBOARD_DIR)) if is_chief else None
    history = run_log.read_history(csv_path)
    best_path = os.path.join(model_dir, rundir.WEIGHTS["best"])
    latest_path = os.path.join(model_dir, rundir.WEIGHTS["latest"])
    # A resumed run goes on counting from the wall time its last finished epoch recorded
    # (the time between a crash and the resume is not counted).
    start_time = time.time() - (history[-1]["wall_seconds"] if history else 0.0)
    val_ds = source.val_dataset(config.batch_size)

    while int(epoch_var.numpy()) < config.epochs:
        epoch = int(epoch_var.numpy())
        skip = int(step_in_epoch.numpy())
        if config.verbose and is_chief:
            print(f"Epoch {epoch + 1}/{config.epochs}")
        ds = epoch_dataset(strategy, source, config.batch_size, epoch, skip,
                           steps_per_epoch - skip, replicas // num_workers)
        progress = _Progress(steps_per_epoch, bool(config.verbose) and is_chief)
        epoch_start = time.time()
        for images, labels in ds:
            step = int(global_step.numpy())
            lr = schedule(step)
            optimizer.learning_rate.assign(lr)
            sums = train_step(images, labels, tf.constant(step, tf.int64))
            epoch_sums.assign_add(sums)
            loss_sum, hits, _, n = epoch_sums.numpy()
            batch_loss = float(sums[0].numpy()) / max(1.0, float(sums[3].numpy()))
            if not math.isfinite(batch_loss):
                _diverged(f"The training loss became {batch_loss} at step {step} (epoch {epoch + 1})",
                          manager)
            global_step.assign_add(1)
            step_in_epoch.assign_add(1)
            progress.update(int(step_in_epoch.numpy()),
                            [("loss", loss_sum / n), ("top1", hits / n), ("lr", lr)])
            if (config.checkpoint_every_steps and int(global_step.numpy()) % config.checkpoint_every_steps == 0
                    and int(step_in_epoch.numpy()) < steps_per_epoch):
                _save_if_finite(manager, model, int(global_step.numpy()))
        epoch_train_seconds = time.time() - epoch_start
        epoch_images = (int(step_in_epoch.numpy()) - skip) * config.batch_size
        if not _all_finite(model):
            _diverged(f"A weight became NaN or infinite in epoch {epoch + 1}", manager)

        # With --ema_decay the averaged weights are the ones evaluated, saved as
        # best/latest weights and exported; the checkpoint holds both for resuming.
        with swapped_in(average):
            eval_start = time.time()
            val = evaluate_dataset(model, val_ds, config.model, num_classes)
            eval_seconds = time.time() - eval_start
            rundir.save_weights_atomic(model, latest_path)  # non-chief workers: in their own folder
            if is_chief and schedule.improves(val["top1"]):
                rundir.save_weights_atomic(model, best_path)
        loss_sum, hits, k_hits, n = (float(v) for v in epoch_sums.numpy())
        record = {
            "epoch": epoch + 1, "lr": schedule(int(global_step.numpy()) - 1),
            "loss": loss_sum / n, "top1": hits / n, "top5": k_hits / n if num_classes > 5 else None,
            "val_loss": val["loss"], "val_top1": val["top1"],
            "val_top5": val["top5"] if num_classes > 5 else None,
            "seconds": time.time() - epoch_start, "eval_seconds": eval_seconds,
            # The training steps this process ran in the epoch and their time (an epoch resumed
            # mid-way counts its resumed part): the throughput in summary.json sums these.
            "train_images": epoch_images, "train_seconds": epoch_train_seconds,
            "wall_seconds": time.time() - start_time,
        }
        dropped = schedule.end_of_epoch(val["top1"])
        epoch_var.assign_add(1)
        step_in_epoch.assign(0)
        epoch_sums.assign(tf.zeros([4], tf.float64))
        manager.save(checkpoint_number=int(global_step.numpy()))
        history.append(record)
        if is_chief:
            run_log.log_epoch(csv_path, writer, record, history)
        if config.verbose and is_chief:
            top5 = f" val_top5 {record['val_top5']:.4f}" if record["val_top5"] is not None else ""
            print(f"epoch {epoch + 1}: loss {record['loss']:.4f} top1 {record['top1']:.4f} "
                  f"val_loss {record['val_loss']:.4f} val_top1 {record['val_top1']:.4f}{top5} "
                  f"lr {record['lr']:.3g}" + (" (learning rate divided by 10)" if dropped else ""))

    summary = run_log.summarize(config, history, start_time, num_classes)
    summary["precision"] = precision
    if is_chief:
        rundir.atomic_write_text(os.path.join(model_dir, rundir.SUMMARY), json.dumps(summary, indent=2))
        run_log.plot_curves(history, os.path.join(model_dir, rundir.CURVES))
    return summary


def _set_precision(precision: str) -> tuple[str, str]:
    """Sets Keras' global dtype policy for --precision; returns (policy, why it was chosen)."""
    precision, why = resolve_precision(precision)
    keras.mixed_precision.set_global_policy(precision)
    if bfloat16_emulated(precision):
        logging.warning("This CPU has no bfloat16 units (AMX or AVX512-BF16): oneDNN emulates bfloat16, "
                        "and --precision=mixed_bfloat16 trains slower than float32 here. "
                        "--precision=auto picks float32 on this CPU.")
    return precision, why


def _load_source(config: TrainConfig, verbose: bool):
    """Opens the run's dataset and reports it (and the unreadable files it skipped)."""
    from data_pipeline.pipeline import load_data

    source = load_data(config.dataset, config.data_dir, config.model, seed=config.seed,
                       cache=config.cache, strict=config.strict, num_classes=config.num_classes,
                       synthetic_examples=config.synthetic_examples)
    for path, reason in source.skipped:
        logging.warning("Skipped unreadable image %s: %s", path, reason)
    if source.skipped:
        logging.warning("Skipped %d unreadable images in all.", len(source.skipped))
    if verbose:
        print(f"Data: {config.dataset}, {len(source.class_names)} classes, {source.num_train} train "
              f"and {source.num_val} val images" + (f", {len(source.skipped)} unreadable files "
                                                   "skipped" if source.skipped else "") + ".")
    return source


def _all_finite(model: keras.Model) -> bool:
    return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in model.trainable_variables)


def _diverged(what: str, manager) -> None:
    raise FloatingPointError(
        f"{what}; stopped. The last good checkpoint is kept: {manager.latest_checkpoint or 'none yet'}. "
        "Lower --learning_rate, or use --precision=float32.")


def _save_if_finite(manager, model: keras.Model, step: int) -> None:
    """Checkpoints, unless the last update left a weight NaN or infinite."""
    if not _all_finite(model):
        _diverged(f"A weight became NaN or infinite at step {step}", manager)
    manager.save(checkpoint_number=step)


def _pca(config: TrainConfig, source, model_dir: str) -> dict:
    """The RGB eigen-decomposition for the PCA colour jitter, computed once per run."""
    from data_pipeline.augment import estimate_rgb_pca
    path = os.path.join(model_dir, rundir.PCA)
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    eigvals, eigvecs = estimate_rgb_pca(source.sample_images(10000))
    pca = {"eigvals": np.asarray(eigvals).tolist(), "eigvecs": np.asarray(eigvecs).tolist()}
    rundir.atomic_write_text(path, json.dumps(pca, indent=2))
    return pca


