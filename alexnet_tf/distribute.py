"""Choosing a tf.distribute strategy from `--strategy` (and TF_CONFIG for several workers)."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from alexnet_tf import cpu_info
from alexnet_tf.config import PRECISIONS, STRATEGIES



def split_cpu(n: int) -> None:
    """Splits the host CPU into `n` logical devices, so that `mirrored` can run without GPUs.

    Must run before TensorFlow initialises its devices.
    """
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(n)])


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the kernels may multiply bfloat16 in hardware (AMX-BF16 or AVX512-BF16).

    Without these (or with `ONEDNN_MAX_CPU_ISA` capping them away), oneDNN emulates
    bfloat16 and mixed precision is slower than float32.
    """
    return cpu_info.detect(cpuinfo).bfloat16_units


def resolve_precision(name: str, cpuinfo: str = "/proc/cpuinfo") -> tuple[str, str]:
    """Turns `--precision` into a Keras dtype policy name, with the reason for "auto".

    "auto" picks what is faster on the first accelerator without changing what is
    learned: bfloat16 on GPUs of compute capability 8.0+ and on CPUs with bfloat16
    units (no loss scaling needed), float16 with loss scaling on GPUs of capability
    7.x, float32 elsewhere.

    Returns:
        (policy name, reason).
    """
    if name not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}. Received: precision={name!r}")
    if name != "auto":
        if name != "float32" and not tf.config.list_physical_devices("GPU"):
            cpu_info.detect(cpuinfo).check_dtype(name.removeprefix("mixed_"))
        return name, "asked for"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
        if capability and tuple(capability) >= (8, 0):
            return "mixed_bfloat16", f"auto: GPU of compute capability {capability[0]}.{capability[1]}"
        if capability and tuple(capability) >= (7, 0):
            return "mixed_float16", f"auto: GPU of compute capability {capability[0]}.{capability[1]}"
        return "float32", "auto: GPU without fast half-precision units"
    if cpu_has_bfloat16(cpuinfo):
        return "mixed_bfloat16", "auto: the CPU has bfloat16 units (AMX/AVX512-BF16)"
    return "float32", "auto: the CPU has no bfloat16 units"


def bfloat16_emulated(precision: str, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when `precision` computes in bfloat16 on a CPU without bfloat16 units.

    There oneDNN emulates bfloat16 and a train step is slower than in float32; GPUs and
    TPUs, when TensorFlow sees one, run it natively.
    """
    if precision != "mixed_bfloat16":
        return False
    if tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"):
        return False
    return not cpu_has_bfloat16(cpuinfo)


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                         '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                         '"task": {"type": "worker", "index": 0}}).')
    try:
        config = json.loads(raw)
        config["cluster"], config["task"]["type"], config["task"]["index"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"TF_CONFIG is not valid: it needs 'cluster' and 'task' with 'type' "
                         f"and 'index'. Received: TF_CONFIG={raw!r}") from None
    return config


def make_strategy(name: str = "auto"):
    """Builds the strategy named by `--strategy`.

    Args:
        name: "auto" (all local GPUs mirrored when there are several, else one device),
            "one_device", "mirrored" (all local GPUs, or all logical CPUs without GPUs),
            "multi_worker" (MultiWorkerMirroredStrategy from TF_CONFIG) or "tpu".

    Returns:
        (strategy, is_chief, num_workers, worker_index).

    Raises:
        ValueError: on an unknown name, a missing or bad TF_CONFIG, or no TPU.
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: strategy={name!r}")
    # Collective ops must be configured before anything initialises TF's devices.
    if name == "multi_worker":
        config = _tf_config()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        task = config["task"]
        workers = len(config["cluster"].get("worker", [])) + len(config["cluster"].get("chief", []))
        if "chief" in config["cluster"]:
            is_chief = task["type"] == "chief"
            index = 0 if is_chief else int(task["index"]) + 1
        else:
            is_chief = task["type"] == "worker" and int(task["index"]) == 0
            index = int(task["index"])
        return strategy, is_chief, workers, index
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "one_device"
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0"), True, 1, 0
    if name == "mirrored":
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices), True, 1, 0
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise ValueError(f"--strategy=tpu found no TPU: {e}") from None
    return tf.distribute.TPUStrategy(resolver), True, 1, 0
