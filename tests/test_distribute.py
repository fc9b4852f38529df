"""tf.distribute: mirrored replicas and two workers match a single device on the same global batch."""

import json
import os
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from helpers import cli_env, main_command, read_weights as weights
# No augmentation and no dropout: every topology then computes the same mean gradient.
FLAGS = ["train", "--model=cifar", "--dataset=synthetic", "--num_classes=3", "--synthetic_examples=256",
         "--batch_size=16", "--epochs=1", "--steps_per_epoch=2", "--seed=3", "--learning_rate=0.02",
         "--noaugment", "--dropout=0", "--pca_std=0"]


def run(model_dir, *extra, env_extra=None, wait=True):
    env = cli_env(**(env_extra or {}))
    cmd = main_command(*FLAGS, f"--model_dir={model_dir}", *extra)
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def trained(model_dir, *extra):
    """Train in `model_dir` (which must succeed) and return its latest weights."""
    result = run(model_dir, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return weights(os.path.join(model_dir, "latest.weights.h5"))


@pytest.fixture(scope="module")
def initial(tmp_path_factory):
    """The initial weights: the same run with a zero learning rate."""
    return trained(str(tmp_path_factory.mktemp("initial")), "--strategy=one_device",
                   "--learning_rate=0")


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    return trained(str(tmp_path_factory.mktemp("single")), "--strategy=one_device")


def assert_same_updates(got, want, initial):
    """The weight updates agree to float tolerance (summation order differs across replicas).

    A decay term counted once per replica, or different images in a step, gives errors of
    0.7% and more after one step; summation order alone gives ~1e-6 after one step and
    ~2e-4 after two (round-off grows through the momentum).
    """
    assert got.keys() == want.keys() == initial.keys() and len(got) >= 16
    for name in want:
        update = want[name] - initial[name]
        assert np.linalg.norm(update) > 0, name
        error = np.linalg.norm((got[name] - initial[name]) - update) / np.linalg.norm(update)
        assert error < 2e-3, f"{name}: relative update error {error:.2e}"


def test_mirrored_two_cpu_replicas(tmp_path, single_device, initial):
    got = trained(str(tmp_path), "--strategy=mirrored", "--cpu_devices=2")
    assert_same_updates(got, single_device, initial)


def test_mirrored_weight_average_matches_one_device(tmp_path, initial):
    """--ema_decay under two mirrored replicas: the saved (averaged) weights match one device's."""
    one = trained(os.path.join(tmp_path, "one"), "--strategy=one_device", "--ema_decay=0.5")
    two = trained(os.path.join(tmp_path, "two"), "--strategy=mirrored", "--cpu_devices=2",
                  "--ema_decay=0.5")
    assert_same_updates(two, one, initial)


def test_batch_not_divisible_by_replicas(tmp_path):
    result = run(str(tmp_path), "--strategy=mirrored", "--cpu_devices=3")
    assert result.returncode == 1
    assert "not divisible" in result.stderr and "Traceback" not in result.stderr


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_workers(model_dir, *extra):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    return [run(model_dir, "--strategy=multi_worker", *extra, wait=False,
                env_extra={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
            for i in range(2)]


def finish(procs, timeout=600):
    """Waits for the workers; returns [(returncode, stdout, stderr)]."""
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
            outs.append((p.returncode, out, err))
        finally:
            p.kill()
    return outs


def test_two_workers_on_localhost(tmp_path, single_device, initial):
    model_dir = str(tmp_path)
    for code, _, err in finish(start_workers(model_dir)):
        assert code == 0, err[-3000:]
    chief = weights(os.path.join(model_dir, "latest.weights.h5"))
    other = weights(os.path.join(model_dir, ".worker-1", "latest.weights.h5"))
    for name in chief:
        np.testing.assert_array_equal(chief[name], other[name], err_msg=name)
    assert_same_updates(chief, single_device, initial)


def test_killed_worker_stops_the_cluster_and_a_restart_resumes(tmp_path):
    """SIGKILL one worker mid-run: the chief stops with a clear message, its checkpoints
    intact; restarting both workers resumes and ends where an uninterrupted run ends."""
    extra = ("--epochs=2", "--steps_per_epoch=6", "--checkpoint_every_steps=2")
    reference = os.path.join(tmp_path, "reference")
    for code, _, err in finish(start_workers(reference, *extra)):
        assert code == 0, err[-3000:]

    model_dir = os.path.join(tmp_path, "run")
    procs = start_workers(model_dir, *extra)
    ckpt = os.path.join(model_dir, "ckpt")
    deadline = time.time() + 600
    while time.time() < deadline and not (os.path.isdir(ckpt) and any(n.endswith(".index") for n in os.listdir(ckpt))):
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    code, out, err = finish(procs[:1], timeout=300)[0]
    procs[1].wait()
    saved = sorted(n for n in os.listdir(ckpt) if n.endswith(".index"))
    assert code == 1, err[-3000:]
    assert "Lost another worker" in err and "Traceback" not in err, err[-3000:]
    assert saved and "ckpt-12.index" not in saved, f"the kill came too late to be mid-run: {saved}"

    outs = finish(start_workers(model_dir, *extra))
    for code, _, err in outs:
        assert code == 0, err[-3000:]
    assert "Resuming from" in outs[0][1]
    want = weights(os.path.join(reference, "latest.weights.h5"))
    for path in ("latest.weights.h5", os.path.join(".worker-1", "latest.weights.h5")):
        got = weights(os.path.join(model_dir, path))
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)


CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f {extra} rdtscp\n"


@pytest.mark.parametrize("extra, want", [
    ("amx_bf16 amx_tile", "mixed_bfloat16"),
    ("avx512_bf16", "mixed_bfloat16"),
    ("avx512_vnni amx_int8", "float32"),  # int8 units only: bfloat16 would be emulated
    ("", "float32"),
])
def test_auto_precision_follows_the_cpu_flags(tmp_path, monkeypatch, extra, want):
    from alexnet_tf.distribute import bfloat16_emulated, resolve_precision
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)  # its cap: tests/test_cpu_info.py
    cpuinfo = os.path.join(tmp_path, "cpuinfo")
    with open(cpuinfo, "w") as f:
        f.write(CPUINFO.format(extra=extra))
    # The suite hides GPUs (conftest), so the CPU decides.
    assert resolve_precision("auto", cpuinfo)[0] == want
    # Asking for bfloat16 where "auto" would not pick it is flagged as emulated.
    assert bfloat16_emulated("mixed_bfloat16", cpuinfo) == (want == "float32")
    assert not bfloat16_emulated("float32", cpuinfo) and not bfloat16_emulated("mixed_float16", cpuinfo)
    assert resolve_precision("float32", cpuinfo)[0] == "float32"
    assert resolve_precision("auto", os.path.join(tmp_path, "missing"))[0] == "float32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("float8", cpuinfo)


def test_multi_worker_without_tf_config(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    result = subprocess.run(main_command(*FLAGS, f"--model_dir={tmp_path}", "--strategy=multi_worker"),
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 1
    assert "TF_CONFIG" in result.stderr and "Traceback" not in result.stderr
