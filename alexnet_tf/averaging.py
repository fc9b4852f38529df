"""An exponential moving average of the weights (Polyak averaging) for evaluation and export."""

from __future__ import annotations

import contextlib

import tensorflow as tf


class WeightAverage:
    """Shadow copies `s` of a model's trainable weights `w`, updated after every step:

        s <- d * s + (1 - d) * w,   d = min(decay, (1 + n) / (10 + n)),

    n being the number of the update (1, 2, ...). The warm-up term is that of
    `tf.train.ExponentialMovingAverage(num_updates=...)`: early averages are not
    held back by the random initial weights.

    Create it under the distribution strategy's scope and call `update` in
    cross-replica context (outside `strategy.run`): the replicas' weights are
    equal after each synchronous step, so every replica's shadow is too.
    """

    def __init__(self, variables, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"The weight-average decay must be in (0, 1). Received: {decay!r}")
        self.decay = float(decay)
        self.variables = list(variables)
        self.shadows = [tf.Variable(tf.identity(v.value), trainable=False,
                                    name="average_" + v.path.replace("/", "_"))
                        for v in self.variables]

    def update(self, count):
        """One averaging step; `count` is the number of this update (an int64 tensor, from 1)."""
        n = tf.cast(count, tf.float32)
        d = tf.minimum(tf.constant(self.decay, tf.float32), (1.0 + n) / (10.0 + n))
        for s, v in zip(self.shadows, self.variables):
            s.assign_sub((1.0 - tf.cast(d, s.dtype)) * (s - tf.cast(v.value, s.dtype)))

    @tf.function
    def _swap(self):
        for s, v in zip(self.shadows, self.variables):
            raw = tf.identity(v.value)
            v.assign(s)
            s.assign(raw)

    @contextlib.contextmanager
    def swapped(self):
        """Inside the block the model holds the averaged weights (and the shadows the raw ones)."""
        self._swap()
        try:
            yield
        finally:
            self._swap()


def swapped_in(average: WeightAverage | None):
    """`average.swapped()`, or a no-op when averaging is off."""
    return average.swapped() if average is not None else contextlib.nullcontext()
