"""Timing helpers shared by the benchmarks: threads, medians, the machine's matmul peak."""

from __future__ import annotations

import json
import os
import statistics
import time

import tensorflow as tf


def set_threads(intra: int = 0, inter: int = 0) -> dict:
    """Sets TF's thread pools (0: TF's default) and returns what is in force."""
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads() or "default",
            "cores": os.cpu_count()}


def time_calls(fns: dict, reps: int, warmup: int = 1) -> dict:
    """Times each callable `reps` times, interleaved (so machine noise hits all alike).

    Returns {name: [seconds per call]}. Each callable must block until its work is done.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs):
    return statistics.median(xs)


def matmul_peak_gflops(n: int = 4096, reps: int = 5) -> float:
    """float32 GFLOP/s of an n x n matmul: the ceiling that conv/dense layers can reach here."""
    a = tf.random.normal((n, n), seed=1)
    b = tf.random.normal((n, n), seed=2)
    fn = tf.function(lambda: tf.linalg.matmul(a, b))
    ts = time_calls({"mm": lambda: fn().numpy()}, reps, warmup=2)["mm"]
    return 2.0 * n ** 3 / median(ts) / 1e9


def emit(records: list, output: str | None) -> None:
    """Writes the records as a JSON list when `output` is given."""
    if output:
        tmp = output + ".tmp"
        with open(tmp, "w") as f:
            json.dump(records, f, indent=2)
        os.replace(tmp, output)


def table(records: list, columns: list) -> str:
    """Formats records as a plain-text table."""
    rows = [[_fmt(r.get(c)) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(out)


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)
