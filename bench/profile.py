"""Op-level timings of a train step from TensorFlow's profiler: which ops take the time.

`python main.py benchmark --what=profile --model=owt` traces a few steps of the bare
model and of the `train` command's step and prints, per op type and per layer, the
milliseconds each takes per step (wall time on TF's executor threads; an op's
intra-op worker threads are inside its time).
"""

from __future__ import annotations

import collections
import glob
import os
import tempfile

import tensorflow as tf

# Executor bookkeeping events that are not ops.
_NOT_OPS = ("ExecutorState::Process", "ThreadpoolListener", "MemoryAllocation", "MemoryDeallocation")


def _xspace(logdir: str):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise RuntimeError(f"The profiler wrote no trace under {logdir}.")
    space = xplane_pb2.XSpace()
    with open(max(files, key=os.path.getmtime), "rb") as f:
        space.ParseFromString(f.read())
    return space


def op_times(space) -> dict:
    """{(op name, op type): seconds} summed over the executor threads of the host plane."""
    times = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute") and not line.name.startswith("tf_inter"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or name.startswith(_NOT_OPS):
                    continue
                op, _, kind = name.rpartition(":")
                times[(op, kind)] += event.duration_ps * 1e-12
    return dict(times)


def trace(step, steps: int = 3, warmup: int = 2) -> dict:
    """Runs `step` (a blocking callable) `warmup` times, then traces `steps` calls.

    Returns:
        {(op name, op type): seconds per step}.
    """
    for _ in range(warmup):
        step()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(steps):
                step()
        finally:
            tf.profiler.experimental.stop()
        times = op_times(_xspace(logdir))
    return {key: t / steps for key, t in times.items()}


def layer_of(op_name: str, layers=()) -> str:
    """The layer an op belongs to: the first scope of its name that names one of `layers`.

    Keras names the ops of layer `conv3` ".../conv3_1/..." in the forward pass and
    "gradient_tape/.../conv3_1/..." in the backward pass (a suffix "_N" per call). Ops
    outside every layer (the optimizer, the augmentation, metrics) group under their
    first scope.
    """
    parts = op_name.split("/")
    for part in parts:
        base = part.rsplit("_", 1)[0] if part.rsplit("_", 1)[-1].isdigit() else part
        if part in layers or base in layers:
            return part if part in layers else base
    return parts[0]


def summarise(times: dict, by: str = "type", top: int = 15, layers=()) -> list:
    """The ops' time per step grouped by op type ("type") or by layer ("layer"), largest first.

    Args:
        times: {(op name, op type): seconds per step}, from `trace`.
        by: "type" or "layer".
        top: rows kept; the rest is summed into a last "(rest)" row.
        layers: the model's layer names, for `by="layer"`.

    Returns:
        [{"group", "ms_per_step", "share"}].
    """
    groups = collections.Counter()
    for (op, kind), t in times.items():
        groups[kind if by == "type" else layer_of(op, layers)] += t
    total = sum(groups.values()) or 1.0
    rows = [{"group": g, "ms_per_step": t * 1e3, "share": t / total} for g, t in groups.most_common(top)]
    rest = total - sum(r["ms_per_step"] / 1e3 for r in rows)
    if rest > 1e-9:
        rows.append({"group": "(rest)", "ms_per_step": rest * 1e3, "share": rest / total})
    return rows
