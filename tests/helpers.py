"""Helpers shared by the tests: running the CLI in a subprocess, reading weight files."""

import os
import subprocess
import sys

import h5py
import pytest

from alexnet_tf import cpu_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# For the tests that build bfloat16 kernels in-process: under an ONEDNN_MAX_CPU_ISA cap that
# takes them from oneDNN they would abort the test process (the CLI refuses such a run).
needs_bfloat16_kernels = pytest.mark.skipif(
    "bfloat16" in cpu_info.detect().capped_dtypes,
    reason="ONEDNN_MAX_CPU_ISA leaves oneDNN no bfloat16 kernels on this CPU")


def cli_env(**extra) -> dict:
    """The environment of a CLI subprocess: quiet TensorFlow, CPU only."""
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", **extra)


def main_command(*args) -> list:
    return [sys.executable, os.path.join(ROOT, "main.py"), *args]


def run_main(*args, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs `python main.py ARGS` from the repository root and captures its output."""
    return subprocess.run(main_command(*args), capture_output=True, text=True, timeout=timeout,
                          env=env or cli_env(), cwd=ROOT)


def read_weights(path: str) -> dict:
    """Every array of a Keras `.weights.h5` file, by its path in the file."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if hasattr(obj, "shape") else None)
    return out
