"""The learning-rate schedules: a linear warm-up into step or cosine decay, or the paper's
division by 10 when the validation accuracy stops improving (§5)."""

from __future__ import annotations

import math

import tensorflow as tf

from alexnet_tf.config import TrainConfig


class LearningRate:
    """The learning-rate schedules; its state (for plateau) lives in checkpointed variables."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int):
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * config.epochs
        self.warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
        # Plateau state.
        self.scale = tf.Variable(1.0, dtype=tf.float64, trainable=False, name="lr_scale")
        self.best_val = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_val_top1")
        self.bad_epochs = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_epochs")
        self.drops = tf.Variable(0, dtype=tf.int64, trainable=False, name="lr_drops")

    def __call__(self, step: int) -> float:
        c = self.config
        base = c.learning_rate
        if self.warmup_steps and step < self.warmup_steps and c.lr_schedule != "plateau":
            return base * (step + 1) / self.warmup_steps
        if c.lr_schedule == "plateau":
            return base * float(self.scale.numpy())
        if c.lr_schedule == "step":  # /10 after each third of the run
            third = max(1, self.total_steps // 3)
            return base * 0.1 ** min(2, step // third)
        span = max(1, self.total_steps - self.warmup_steps)  # cosine
        progress = min(1.0, (step - self.warmup_steps) / span)
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))

    def improves(self, val_top1: float) -> bool:
        """Whether `val_top1` beats every epoch recorded so far."""
        return val_top1 > float(self.best_val.numpy())

    def end_of_epoch(self, val_top1: float) -> bool:
        """Records an epoch's val top-1; returns True when the plateau rule divided the rate."""
        if self.improves(val_top1):
            self.best_val.assign(val_top1)
            self.bad_epochs.assign(0)
            return False
        self.bad_epochs.assign_add(1)
        if (self.config.lr_schedule == "plateau" and self.bad_epochs.numpy() >= self.config.plateau_patience
                and self.drops.numpy() < self.config.max_lr_drops):
            self.scale.assign(self.scale * 0.1)
            self.drops.assign_add(1)
            self.bad_epochs.assign(0)
            return True
        return False
