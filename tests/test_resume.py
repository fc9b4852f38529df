"""Crash safety: a run killed with SIGKILL and restarted ends bit-identical to an uninterrupted one."""

import csv
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from helpers import cli_env as env, main_command, read_weights
FLAGS = ["train", "--model=cifar", "--dataset=synthetic", "--num_classes=3", "--synthetic_examples=320",
         "--batch_size=16", "--epochs=2", "--deterministic", "--checkpoint_every_steps=5", "--seed=7",
         "--learning_rate=0.01", "--noise_std=2", "--cutout=4", "--ema_decay=0.9"]


def command(model_dir):
    return main_command(*FLAGS, f"--model_dir={model_dir}")


def checkpoint_steps(model_dir):
    folder = os.path.join(model_dir, "ckpt")
    if not os.path.isdir(folder):
        return []
    return sorted(int(n.split("-")[1].split(".")[0]) for n in os.listdir(folder) if n.endswith(".index"))


def read_log(model_dir):
    with open(os.path.join(model_dir, "log.csv")) as f:
        return list(csv.DictReader(f))


def without_timing(rows):
    """log.csv rows without the columns that depend on timing or on where the run was killed."""
    return [{k: v for k, v in row.items() if "seconds" not in k and k != "train_images"} for row in rows]


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    reference = os.path.join(tmp_path, "reference")
    done = subprocess.run(command(reference), capture_output=True, text=True, env=env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    crashed = os.path.join(tmp_path, "crashed")
    proc = subprocess.Popen(command(crashed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    try:
        deadline = time.time() + 600
        # Killed in the second epoch (20 steps each): the first epoch's log row must survive too.
        while time.time() < deadline and not [s for s in checkpoint_steps(crashed) if s >= 25]:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    steps = checkpoint_steps(crashed)
    assert steps and 20 < max(steps) < 40, f"the kill was not in the second epoch: {steps}"

    resumed = subprocess.run(command(crashed), capture_output=True, text=True, env=env(), timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout
    want = read_weights(os.path.join(reference, "latest.weights.h5"))
    got = read_weights(os.path.join(crashed, "latest.weights.h5"))
    assert want.keys() == got.keys() and len(want) >= 16
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    log = read_log(crashed)
    assert without_timing(log) == without_timing(read_log(reference))
    assert [row["epoch"] for row in log] == ["1", "2"]

    # The throughput counts the steps of both processes: epoch 1 whole (the killed process),
    # epoch 2 from the step it resumed at; each over its own training seconds.
    resumed_at = int(re.search(r"epoch 2, step (\d+) of 20", resumed.stdout).group(1))
    assert [int(row["train_images"]) for row in log] == [20 * 16, (20 - resumed_at) * 16]
    with open(os.path.join(crashed, "summary.json")) as f:
        summary = json.load(f)
    seconds = sum(float(row["train_seconds"]) for row in log)
    assert summary["train_images"] == (40 - resumed_at) * 16
    assert summary["images_per_second"] == pytest.approx((40 - resumed_at) * 16 / seconds, rel=1e-9)


def test_refuses_to_resume_another_variant(tmp_path):
    model_dir = os.path.join(tmp_path, "run")
    first = subprocess.run(command(model_dir)[:-1] + ["--epochs=1", "--steps_per_epoch=2", f"--model_dir={model_dir}"],
                           capture_output=True, text=True, env=env(), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    other = subprocess.run(command(model_dir) + ["--num_classes=4"], capture_output=True, text=True,
                           env=env(), timeout=600)
    assert other.returncode == 1
    assert "num_classes=3" in other.stderr and "num_classes=4" in other.stderr
    assert "Traceback" not in other.stderr
