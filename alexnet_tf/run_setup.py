"""Setting up a training run: devices and precision, this process's folder, the data, the
PCA colour statistics, and run.json (checked against the stored one when a run resumes)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import numpy as np
import tensorflow as tf
import keras
from absl import logging

from alexnet_tf import cpu_info, rundir, storage
from alexnet_tf.config import TrainConfig
from alexnet_tf.distribute import bfloat16_emulated, make_strategy, resolve_precision, split_cpu
from alexnet_tf.finetune import InitSource

# Options that must match for a run to resume from a checkpoint.
RESUME_KEYS = ("variant", "num_classes", "model_kwargs", "weight_average", "trainable_from")


@dataclasses.dataclass(frozen=True)
class Run:
    """What stays fixed through a training run: its settings, the strategy and this process's
    place in it, its folder and its data."""
    config: TrainConfig
    strategy: tf.distribute.Strategy
    precision: str          # Keras' global dtype policy
    is_chief: bool
    num_workers: int
    worker_index: int
    model_dir: str          # this process's folder: the run folder, or a worker's own inside it
    source: object          # the dataset (see `data_pipeline.pipeline.load_data`)
    model_kwargs: dict      # the model options of run.json
    steps_per_epoch: int

    @property
    def num_classes(self) -> int:
        return len(self.source.class_names)

    @property
    def local_replicas(self) -> int:
        """The replicas of this worker."""
        return self.strategy.num_replicas_in_sync // self.num_workers

    @property
    def verbose(self) -> bool:
        """Whether this process prints progress: the chief does, unless --verbose=0."""
        return bool(self.config.verbose) and self.is_chief


def open_run(config: TrainConfig, init: InitSource | None, held: contextlib.ExitStack) -> Run:
    """Sets up the devices, the precision, this process's folder and the data, and records
    the run in run.json (or checks that the run it resumes asked for the same).

    The chief takes the run folder's lock into `held` before it writes anything there.

    Raises:
        ValueError: on a batch that the replicas cannot share or the training split cannot
            fill, or on settings that differ from those of the run in `config.model_dir`.
    """
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
    if is_chief:
        held.enter_context(storage.exclusive_lock(config.model_dir, rundir.lock_path(config.model_dir)))

    source = _load_source(config, verbose=bool(config.verbose) and is_chief)
    if config.verbose and is_chief:
        print(f"Precision: {precision} ({why}); {replicas} replica(s) of {strategy.__class__.__name__}; "
              f"oneDNN {cpu_info.onednn_description()}.")
    info = _run_info(config, source, len(source.class_names), init)
    if os.path.isfile(os.path.join(config.model_dir, rundir.RUN_INFO)):
        _check_resumable(rundir.read_run_info(config.model_dir), info, config.model_dir)
    if is_chief:
        rundir.write_run_info(config.model_dir, info)
    return Run(config=config, strategy=strategy, precision=precision, is_chief=is_chief,
               num_workers=num_workers, worker_index=worker_index, model_dir=model_dir, source=source,
               model_kwargs=info["model_kwargs"], steps_per_epoch=_steps_per_epoch(config, source))


def augment_config(run: Run):
    """The run's `AugmentConfig`, with the PCA colour statistics when --pca_std asks for them."""
    from data_pipeline.augment import AugmentConfig

    config = run.config
    # Every worker uses the chief's statistics.
    pca = _pca(run.source, config.model_dir) if config.pca_std else None
    return AugmentConfig.for_variant(
        config.model, flip=config.flip, noise_std=config.noise_std, pca_std=config.pca_std,
        cutout=config.cutout, pca_eigvals=None if pca is None else tuple(pca["eigvals"]),
        pca_eigvecs=None if pca is None else tuple(map(tuple, pca["eigvecs"])))


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


def _run_info(config: TrainConfig, source, num_classes: int, init: InitSource | None) -> dict:
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


def _steps_per_epoch(config: TrainConfig, source) -> int:
    full_steps = source.num_train // config.batch_size
    if full_steps == 0:
        raise ValueError(f"--batch_size={config.batch_size} is larger than the training split "
                         f"({source.num_train} images).")
    return min(full_steps, config.steps_per_epoch) if config.steps_per_epoch else full_steps


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


def _pca(source, model_dir: str) -> dict:
    """The RGB eigen-decomposition for the PCA colour jitter, computed once per run."""
    from data_pipeline.augment import estimate_rgb_pca
    path = os.path.join(model_dir, rundir.PCA)
    if os.path.isfile(path):
        return rundir.read_json(path, "delete it and the next run computes it again")
    eigvals, eigvecs = estimate_rgb_pca(source.sample_images(10000))
    pca = {"eigvals": np.asarray(eigvals).tolist(), "eigvecs": np.asarray(eigvecs).tolist()}
    rundir.atomic_write_text(path, json.dumps(pca, indent=2))
    return pca
