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


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of FLAGS: what every interrupted and resumed run must end as."""
    folder = str(tmp_path_factory.mktemp("reference"))
    done = subprocess.run(command(folder), capture_output=True, text=True, env=env(), timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def assert_same_run(model_dir, reference):
    """Bit-identical final weights and the same log, timing aside."""
    want = read_weights(os.path.join(reference, "latest.weights.h5"))
    got = read_weights(os.path.join(model_dir, "latest.weights.h5"))
    assert want.keys() == got.keys() and len(want) >= 16
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert without_timing(read_log(model_dir)) == without_timing(read_log(reference))


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, reference):
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
    assert_same_run(crashed, reference)
    log = read_log(crashed)
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


def test_refuses_to_resume_another_variant(reference):
    model_dir = reference  # refused before anything is written
    other = subprocess.run(command(model_dir) + ["--num_classes=4"], capture_output=True, text=True,
                           env=env(), timeout=600)
    assert other.returncode == 1
    assert "num_classes=3" in other.stderr and "num_classes=4" in other.stderr
    assert "Traceback" not in other.stderr


def test_full_disk_then_a_damaged_checkpoint_then_resume_is_bit_identical(tmp_path, reference):
    """The disk fills at the end of the first epoch: one line, nothing half-written. With room
    again and the newest checkpoint cut short, the rerun resumes from the one before it and
    ends as the uninterrupted run."""
    from test_storage import small_disk
    with small_disk(tmp_path / "disk", 215) as disk:  # three 68 MB checkpoints fit, not the weights
        model_dir = os.path.join(disk, "run")
        full = subprocess.run(command(model_dir), capture_output=True, text=True, env=env(), timeout=900)
        assert full.returncode == 1, full.stderr[-3000:]
        lines = full.stderr.strip().splitlines()
        assert re.fullmatch(
            re.escape(f"Error: no space left on device while writing "
                      f"{os.path.join(model_dir, 'latest.weights.h5')}") + r" \([\d,]+ bytes free, [\d,]+ needed\)"
            + re.escape("; the last complete checkpoint is ckpt-15; free space and run the same "
                        "command to resume"), lines[-1]), lines
        assert "Traceback" not in full.stderr
        left = [os.path.relpath(os.path.join(p, n), model_dir)
                for p, dirs, files in os.walk(model_dir) for n in dirs + files]
        assert not [n for n in left if ".tmp" in n or "_temp" in n], left
        assert checkpoint_steps(model_dir) == [5, 10, 15]

        subprocess.run(["mount", "-o", "remount,size=700M", disk], check=True)
        data = os.path.join(model_dir, "ckpt", "ckpt-15.data-00000-of-00001")
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
        resumed = subprocess.run(command(model_dir), capture_output=True, text=True, env=env(), timeout=900)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "Skipped the damaged checkpoint " + os.path.join(model_dir, "ckpt", "ckpt-15") in resumed.stderr
        assert f"Resuming from {os.path.join(model_dir, 'ckpt', 'ckpt-10')}" in resumed.stdout
        assert sorted(os.listdir(os.path.join(model_dir, "ckpt", "damaged"))) == [
            "ckpt-15.data-00000-of-00001", "ckpt-15.index"]
        assert_same_run(model_dir, reference)


def test_checkpoints_keep_the_format_of_earlier_runs(reference):
    """A checkpoint holds the variables, by name and shape, that runs written by earlier
    versions hold (tests/data/run_format was written by one), so those runs still resume."""
    import tensorflow as tf
    model_dir = reference
    fixture = os.path.join(os.path.dirname(__file__), "data", "run_format")
    with open(os.path.join(fixture, "checkpoint_variables.json")) as f:
        old = {name: shape for name, shape in json.load(f)}
    new = {name: shape for name, shape in tf.train.list_variables(tf.train.latest_checkpoint(
        os.path.join(model_dir, "ckpt"))) if name != "_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert new == old
    with open(os.path.join(fixture, "run.json")) as f:
        old_info = json.load(f)
    with open(os.path.join(model_dir, "run.json")) as f:
        new_info = json.load(f)
    assert set(old_info) <= set(new_info) and set(old_info["config"]) <= set(new_info["config"])


def test_one_writer_per_run_folder(tmp_path):
    """A second train on a folder that is being trained stops before touching it, naming the
    process; evaluate reads the last complete weights and says that training is going on."""
    model_dir = os.path.join(tmp_path, "run")
    long_run = main_command("train", "--model=cifar", "--dataset=synthetic", "--num_classes=3",
                            "--synthetic_examples=32", "--batch_size=16", "--epochs=1000",
                            "--steps_per_epoch=1", f"--model_dir={model_dir}")
    first = subprocess.Popen(long_run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    try:
        deadline = time.time() + 300
        while not os.path.isfile(os.path.join(model_dir, "best.weights.h5")) and time.time() < deadline:
            assert first.poll() is None, "the first run ended"
            time.sleep(0.05)
        info_mtime = os.path.getmtime(os.path.join(model_dir, "run.json"))
        second = subprocess.Popen(long_run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=env())
        evaluate = subprocess.Popen(main_command("evaluate", f"--model_dir={model_dir}"),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
        _, err = second.communicate(timeout=300)
        assert second.returncode == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), lines
        assert f"is in use by another training run (pid {first.pid} " in lines[0]
        assert os.path.getmtime(os.path.join(model_dir, "run.json")) == info_mtime
        out, err = evaluate.communicate(timeout=300)
        assert evaluate.returncode == 0, err[-2000:]
        assert f"is being trained right now (pid {first.pid} " in err and "top1" in out
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
