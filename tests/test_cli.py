"""The command line: usage errors are one clear line; `train` runs end to end on synthetic data."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize("args, message", [
    ((), "Missing command"),
    (("fly",), "Unknown command 'fly'"),
    (("train", "--model=vgg"), "--model"),
    (("train", "--batch_size=0"), "--batch_size"),
    (("train", "--precision=float8"), "--precision"),
    (("train", "extra"), "Unexpected arguments: extra"),
])
def test_usage_errors(args, message):
    result = run_main(*args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_commands_and_flags():
    result = run_main("train", "--help")
    assert result.returncode == 0
    for flag in ("--model", "--dataset", "--data_dir", "--model_dir", "--epochs", "--batch_size",
                 "--steps_per_epoch", "--seed"):
        assert flag in result.stdout


def test_train_synthetic_loss_falls(tmp_path):
    model_dir = os.path.join(tmp_path, "run")
    result = run_main("train", "--model=cifar", "--dataset=synthetic", "--num_classes=3",
                      "--synthetic_examples=256", "--batch_size=32", "--epochs=3",
                      "--learning_rate=0.01", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    losses = [r["loss"] for r in summary["history"]]
    assert len(losses) == 3
    assert losses[-1] < losses[0]
    assert summary["epochs"] == 3
    for key in ("best_val_top1", "final_val_top1", "wall_seconds", "images_per_second", "flags"):
        assert summary[key] is not None
    for name in ("run.json", "best.weights.h5", "latest.weights.h5", "log.csv", "curves.png"):
        assert os.path.isfile(os.path.join(model_dir, name)), name


def test_model_dir_that_is_a_file(tmp_path):
    path = os.path.join(tmp_path, "afile")
    open(path, "w").close()
    result = run_main("train", "--dataset=synthetic", f"--model_dir={path}", "--epochs=1")
    assert result.returncode == 1
    assert "is a file" in result.stderr
    assert "Traceback" not in result.stderr
