"""Training: the paper's recipe (§5) as a custom loop on tf.distribute, with exact resume.

The loop is written by hand rather than with `Model.fit` so that one code path
serves one device, several local GPUs and several workers, and so that a
checkpoint holds everything a resumed run needs: weights, optimizer slots,
dropout RNG state, schedule state, epoch and step. The data order and the
augmentation draws are functions of (seed, epoch, step), so they need no state.

Here: the loop (`_train`, `_run_epoch`, `_end_epoch`) and the state it checkpoints
(`TrainState`). Around it: run_setup.py (devices, folder, data, run.json), train_step.py
(the step), schedule.py, finetune.py (--init_from) and run_log.py (log.csv, summary.json).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time

import numpy as np
import tensorflow as tf
import keras
from absl import logging

from alexnet_tf import checkpoints, conv_grad, finetune, run_log, rundir, storage
from alexnet_tf.config import TrainConfig
from alexnet_tf.averaging import WeightAverage, swapped_in
from alexnet_tf.evaluation import evaluate_dataset
from alexnet_tf.model import build_alexnet
from alexnet_tf.optimizer import FusedMomentumSGD
from alexnet_tf.run_setup import Run, augment_config, open_run
from alexnet_tf.schedule import LearningRate
from alexnet_tf.train_step import epoch_dataset, make_replica_step, make_train_step, use_jit


@dataclasses.dataclass(eq=False)
class TrainState:
    """The model and everything else a resumed run needs, with the checkpoint that holds them."""
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    average: WeightAverage | None  # --ema_decay's averaged weights
    schedule: LearningRate
    epoch: tf.Variable          # finished epochs
    step_in_epoch: tf.Variable  # steps done of the epoch in progress
    global_step: tf.Variable
    epoch_sums: tf.Variable     # the epoch in progress: loss sum, top-1 hits, top-5 hits, images
    manager: tf.train.CheckpointManager  # MODEL_DIR/ckpt

    @classmethod
    def create(cls, run: Run, init: finetune.InitSource | None, *, resuming: bool) -> TrainState:
        """Builds the model (from --init_from's weights, frozen before --trainable_from), the
        optimizer, the weight average, the schedule and the counters, on `run`'s strategy."""
        config = run.config
        with run.strategy.scope():
            model = build_alexnet(config.model, run.num_classes, seed=config.seed,
                                  lrn_implementation=config.lrn_implementation, **run.model_kwargs)
            finetune.start_from(model, init, run.source.class_names, config, resuming=resuming,
                                verbose=run.is_chief)
            if conv_grad.wanted(run.precision, run.strategy):
                switched = conv_grad.use_matmul_filter_grad(model)
                if switched and run.verbose:
                    print(f"Kernel gradients of {', '.join(switched)} as bfloat16 matmuls (faster on CPUs).")
            optimizer = FusedMomentumSGD(learning_rate=config.learning_rate, momentum=config.momentum,
                                         coupled_decay=config.weight_decay)
            if run.precision == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            optimizer.build(model.trainable_variables)
            average = WeightAverage(model.trainable_variables, config.ema_decay) if config.ema_decay else None
            schedule = LearningRate(config, run.steps_per_epoch)
            epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
            global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            epoch_sums = tf.Variable(tf.zeros([4], tf.float64), trainable=False, name="epoch_sums")
        # These names are the checkpoint's format: runs written before resume only while they stay.
        checkpoint = tf.train.Checkpoint(
            model=model, optimizer=optimizer,
            rng_states=[v.value for v in model.non_trainable_variables],
            epoch=epoch, step_in_epoch=step_in_epoch, global_step=global_step,
            epoch_sums=epoch_sums, lr_scale=schedule.scale, best_val=schedule.best_val,
            bad_epochs=schedule.bad_epochs, lr_drops=schedule.drops,
            **({"weight_average": average.shadows} if average is not None else {}))
        manager = tf.train.CheckpointManager(checkpoint, os.path.join(run.model_dir, rundir.CHECKPOINT_DIR),
                                             max_to_keep=config.keep_checkpoints)
        return cls(model=model, optimizer=optimizer, average=average, schedule=schedule, epoch=epoch,
                   step_in_epoch=step_in_epoch, global_step=global_step, epoch_sums=epoch_sums,
                   manager=manager)

    def restore_latest(self, checkpoint_dir: str, run: Run) -> None:
        """Restores the newest readable checkpoint in `checkpoint_dir` (the chief's, on every
        worker), if any; damaged ones are moved aside (see `checkpoints`)."""
        own = os.path.abspath(self.manager.directory) == os.path.abspath(checkpoint_dir)
        latest = checkpoints.restore_newest_readable(self.manager.checkpoint, checkpoint_dir, move=own)
        if not latest:
            return
        if own and latest != self.manager.latest_checkpoint:  # some were moved aside: read the state anew
            self.manager = tf.train.CheckpointManager(self.manager.checkpoint, checkpoint_dir,
                                                      max_to_keep=run.config.keep_checkpoints)
        logging.info("Resumed from %s (epoch %d, step %d of the epoch).", latest,
                     int(self.epoch.numpy()) + 1, int(self.step_in_epoch.numpy()))
        if run.config.verbose:
            print(f"Resuming from {latest}: epoch {int(self.epoch.numpy()) + 1}, "
                  f"step {int(self.step_in_epoch.numpy())} of {run.steps_per_epoch}.")

    def weights_finite(self) -> bool:
        return all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in self.model.trainable_variables)

    def diverged(self, what: str) -> None:
        raise FloatingPointError(
            f"{what}; stopped. The last good checkpoint is kept: "
            f"{self.manager.latest_checkpoint or 'none yet'}. "
            "Lower --learning_rate, or use --precision=float32.")

    def save(self, *, check_finite: bool = False) -> None:
        """Checkpoints at the global step; with `check_finite`, unless the last update left a
        weight NaN or infinite. A full disk leaves the previous checkpoints as they were."""
        step = int(self.global_step.numpy())
        if check_finite and not self.weights_finite():
            self.diverged(f"A weight became NaN or infinite at step {step}")
        variables = self.manager.checkpoint.model.weights + self.optimizer.variables + (
            self.average.shadows if self.average is not None else [])
        size = sum(int(np.prod(v.shape)) * tf.as_dtype(v.dtype).size for v in variables)
        checkpoints.save(self.manager, step, needed_bytes=size + (1 << 20))

    def resume_hint(self) -> str:
        """What a user does after a failed write: the checkpoint a rerun resumes from."""
        return checkpoints.resume_hint(self.manager.directory)


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
        variant = config.model
        if not variant and config.init_from:
            variant = finetune.read_init_source(config.init_from).variant
        config = dataclasses.replace(config, model_dir=os.path.join("runs", f"{variant}-{config.dataset}"))
    try:
        with contextlib.ExitStack() as held:  # the run folder's lock, from open_run on
            return _train(config, held)
    except (storage.DiskFullError, storage.ReadOnlyError) as e:
        hint = checkpoints.resume_hint(os.path.join(config.model_dir, rundir.CHECKPOINT_DIR))
        raise e if hint in str(e) else type(e)(f"{e}; {hint}") from None
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


def _train(config: TrainConfig, held: contextlib.ExitStack) -> dict:
    """Trains (or resumes) a run in `config.model_dir`, holding its lock in `held`.

    Returns:
        The run summary (also written to MODEL_DIR/summary.json).

    Raises:
        ValueError: on conflicting settings or data problems; FloatingPointError
        when the loss stops being finite (the last good checkpoint is kept).
    """
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)

    checkpoint_dir = os.path.join(config.model_dir, rundir.CHECKPOINT_DIR)  # the chief's
    resuming = tf.train.latest_checkpoint(checkpoint_dir) is not None
    init = finetune.resolve_init_source(config, resuming)
    config = finetune.with_variant(config, init)
    run = open_run(config, init, held)
    augment = augment_config(run)
    state = TrainState.create(run, init, resuming=resuming)
    state.restore_latest(checkpoint_dir, run)
    replica_step = make_replica_step(
        state.model, state.optimizer, variant=config.model, global_batch=config.batch_size,
        top_k=min(5, run.num_classes), label_smoothing=config.label_smoothing,
        augment=augment if config.augment else None,
        seed=config.seed, seed_offset=run.worker_index * run.local_replicas)
    train_step = make_train_step(run.strategy, replica_step, average=state.average,
                                 jit_compile=use_jit(config))

    log = run_log.RunLog(run.model_dir, write=run.is_chief, pictures=config.tensorboard_pictures)
    # A resumed run goes on counting from the wall time its last finished epoch recorded
    # (the time between a crash and the resume is not counted).
    start_time = time.time() - (log.history[-1]["wall_seconds"] if log.history else 0.0)
    val_ds = run.source.val_dataset(config.batch_size)
    while int(state.epoch.numpy()) < config.epochs:
        trained = _run_epoch(run, state, train_step, log, augment if config.augment else None)
        _end_epoch(run, state, val_ds, trained, log, start_time)

    summary = run_log.summarize(config, log.history, start_time, run.num_classes)
    summary["precision"] = run.precision
    if run.is_chief:
        rundir.atomic_write_text(os.path.join(run.model_dir, rundir.SUMMARY), json.dumps(summary, indent=2))
        curves = os.path.join(run.model_dir, rundir.CURVES)
        with storage.writing(curves):
            run_log.plot_curves(log.history, curves)
    return summary


def _first_replica_view(run: Run, augment, images, step: int):
    """The first replica's batch at `step` as the train step augments it (pixels in [0, 255])."""
    from alexnet_tf.train_step import augmented_view
    local = run.strategy.experimental_local_results(images)[0]
    return augmented_view(local, step, augment, seed=run.config.seed)


def _run_epoch(run: Run, state: TrainState, train_step, log: run_log.RunLog,
               augment) -> tuple[float, float, int]:
    """Runs the steps left of the epoch in progress (all of them unless it resumes mid-way).

    Returns:
        (start time, seconds, images) of the steps this process ran.
    """
    config = run.config
    epoch, skip = int(state.epoch.numpy()), int(state.step_in_epoch.numpy())
    if run.verbose:
        print(f"Epoch {epoch + 1}/{config.epochs}")
    ds = epoch_dataset(run.strategy, run.source, config.batch_size, epoch, skip,
                       run.steps_per_epoch - skip, run.local_replicas)
    progress = _Progress(run.steps_per_epoch, run.verbose)
    first_step = int(state.global_step.numpy())
    start = time.time()
    for images, labels in ds:
        step = int(state.global_step.numpy())
        if step == first_step and log.pictures and augment is not None:  # as the model sees it
            log.images(_first_replica_view(run, augment, images, step), step)
        lr = state.schedule(step)
        state.optimizer.learning_rate.assign(lr)
        sums = train_step(images, labels, tf.constant(step, tf.int64))
        state.epoch_sums.assign_add(sums)
        loss_sum, hits, _, n = state.epoch_sums.numpy()
        batch_loss = float(sums[0].numpy()) / max(1.0, float(sums[3].numpy()))
        if not math.isfinite(batch_loss):
            state.diverged(f"The training loss became {batch_loss} at step {step} (epoch {epoch + 1})")
        state.global_step.assign_add(1)
        state.step_in_epoch.assign_add(1)
        progress.update(int(state.step_in_epoch.numpy()),
                        [("loss", loss_sum / n), ("top1", hits / n), ("lr", lr)])
        every = config.checkpoint_every_steps
        if (every and int(state.global_step.numpy()) % every == 0
                and int(state.step_in_epoch.numpy()) < run.steps_per_epoch):
            state.save(check_finite=True)
    seconds = time.time() - start
    images = (int(state.step_in_epoch.numpy()) - skip) * config.batch_size
    if not state.weights_finite():
        state.diverged(f"A weight became NaN or infinite in epoch {epoch + 1}")
    return start, seconds, images


def _end_epoch(run: Run, state: TrainState, val_ds, trained: tuple[float, float, int],
               log: run_log.RunLog, start_time: float) -> None:
    """Evaluates the epoch just trained, saves the latest (and best) weights, checkpoints,
    and logs the epoch's record."""
    config, model, schedule = run.config, state.model, state.schedule
    epoch_start, train_seconds, train_images = trained
    epoch = int(state.epoch.numpy())
    # With --ema_decay the averaged weights are the ones evaluated, saved as
    # best/latest weights and exported; the checkpoint holds both for resuming.
    with swapped_in(state.average):
        eval_start = time.time()
        val = evaluate_dataset(model, val_ds, config.model, run.num_classes)
        eval_seconds = time.time() - eval_start
        # Non-chief workers save in their own folder.
        hint = state.resume_hint()
        rundir.save_weights_atomic(model, os.path.join(run.model_dir, rundir.WEIGHTS["latest"]), hint)
        if run.is_chief and schedule.improves(val["top1"]):
            rundir.save_weights_atomic(model, os.path.join(run.model_dir, rundir.WEIGHTS["best"]), hint)
    loss_sum, hits, k_hits, n = (float(v) for v in state.epoch_sums.numpy())
    top5 = run.num_classes > 5
    record = {
        "epoch": epoch + 1, "lr": schedule(int(state.global_step.numpy()) - 1),
        "loss": loss_sum / n, "top1": hits / n, "top5": k_hits / n if top5 else None,
        "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"] if top5 else None,
        "seconds": time.time() - epoch_start, "eval_seconds": eval_seconds,
        # The training steps this process ran in the epoch and their time (an epoch resumed
        # mid-way counts its resumed part): the throughput in summary.json sums these.
        "train_images": train_images, "train_seconds": train_seconds,
        "wall_seconds": time.time() - start_time,
    }
    dropped = schedule.end_of_epoch(val["top1"])
    state.epoch.assign_add(1)
    state.step_in_epoch.assign(0)
    state.epoch_sums.assign(tf.zeros([4], tf.float64))
    state.save()
    with storage.writing(os.path.join(run.model_dir, rundir.TENSORBOARD_DIR)):
        log.add(record, model if log.pictures else None)
    if run.verbose:
        print(run_log.epoch_line(record, lr_dropped=dropped))
