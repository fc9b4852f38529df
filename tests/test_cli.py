"""The command line: usage errors are one clear line; `train` runs end to end on synthetic data."""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from helpers import cli_env, run_main


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


# Every command's usage errors: one line on stderr, status 1 (not absl's list of every flag).
ONE_LINE_USAGE_ERRORS = [
    ((), "Missing command"),
    (("no_such_command",), "Unknown command 'no_such_command'"),
    (("train", "--model=vgg"), "--model=vgg"),
    (("train", "--no_such_flag=1"), "no_such_flag"),
    (("train", "--trainable_from=conv9"), "--trainable_from"),
    (("train", "extra"), "Unexpected arguments: extra"),
    (("evaluate",), "needs --model_dir"),
    (("evaluate", "--tta=5crop"), "--tta"),
    (("export",), "needs --model_dir"),
    (("export", "--model_dir=x", "--quantize=int8"), "apply to --format=tflite or all"),
    (("export", "--format=onnx"), "--format"),
    (("predict",), "needs --artifact"),
    (("predict", "--artifact=x"), "needs image files"),
    (("prepare",), "needs --data_dir"),
    (("prepare", "--data_dir=x"), "needs --output_dir"),
    (("benchmark", "--what=everything"), "--what"),
    (("evaluate", "--onednn=sometimes"), "--onednn"),
    (("benchmark", "extra"), "Unexpected arguments"),
    (("convert",), "needs --weights"),
    (("convert", "--weights=x.pth"), "needs --model_dir"),
    (("convert", "--weights=x.pth", "--model_dir=y", "extra"), "Unexpected arguments"),
    (("export", "--model_dir=x", "--learning_rate=0.3"), "--learning_rate does not apply to `export`"),
    (("predict", "--seed=1", "--artifact=x", "a.jpg"), "--seed does not apply to `predict`"),
    (("train", "--recipe=fast"), "--recipe"),
    (("train", "--recipe=finetune", "--data_dir=x"), "--recipe=finetune needs --init_from"),
    (("recipes", "--epochs=3"), "--epochs does not apply to `recipes`"),
    (("features",), "features needs --model_dir"),
    (("features", "--model_dir=x", "--data_dir=y"), "features needs --output"),
    (("features", "--model_dir=x", "--data_dir=y", "--output=f.npz", "--layer=fc8"), "--layer"),
    (("features", "--model_dir=x", "--data_dir=y", "--output=f.npz", "--top=3"),
     "--top does not apply to `features`"),
    (("visualize",), "visualize needs --model_dir"),
    (("visualize", "--model_dir=x"), "visualize needs --output"),
    (("visualize", "--model_dir=x", "--output=f.png", "--show=weights"), "--show"),
    (("visualize", "--model_dir=x", "--output=f.png", "--show=neighbors", "--data_dir=g"),
     "needs --data_dir=GALLERY and --query"),
    (("visualize", "--model_dir=x", "--output=f.png", "--query=q.jpg"), "apply to --show=neighbors"),
    (("visualize", "--model_dir=x", "--output=f.png", "--layer=fc6"), "--layer does not apply to `visualize`"),
    (("visualize", "--model_dir=x", "--output=f.png", "extra"), "Unexpected arguments"),
    (("predict", "--artifact=model.tflite", "--explain=cams", "a.jpg"), "needs gradients at conv5"),
]


def test_every_usage_error_is_one_line():
    import subprocess
    from helpers import ROOT, main_command

    procs = [subprocess.Popen(main_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=cli_env(), cwd=ROOT)
             for args, _ in ONE_LINE_USAGE_ERRORS]
    for (args, message), proc in zip(ONE_LINE_USAGE_ERRORS, procs):
        _, err = proc.communicate(timeout=300)
        lines = err.strip().splitlines()
        assert proc.returncode == 1, (args, err[-2000:])
        assert len(lines) == 1, (args, err[-2000:])
        assert lines[0].startswith("Error: ") and message in lines[0], (args, lines)


def test_onednn_choice_reaches_tensorflow_and_the_log(tmp_path):
    # --onednn beats the variable; the log reports what TensorFlow itself says it runs.
    result = run_main("train", "--dataset=synthetic", "--num_classes=2", "--synthetic_examples=32",
                      "--batch_size=16", "--epochs=1", "--steps_per_epoch=1", "--onednn=off",
                      f"--model_dir={tmp_path / 'run'}", env=cli_env(TF_ENABLE_ONEDNN_OPTS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "oneDNN off (--onednn=off)" in result.stdout, result.stdout[-2000:]
    # A value TensorFlow would not understand is one line, before anything runs.
    result = run_main("train", f"--model_dir={tmp_path / 'bad'}", env=cli_env(TF_ENABLE_ONEDNN_OPTS="yes"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "TF_ENABLE_ONEDNN_OPTS='yes'" in lines[0], lines
    assert not os.path.exists(tmp_path / "bad")


def test_help_lists_commands_and_flags():
    result = run_main("train", "--help")
    assert result.returncode == 0
    for flag in ("--model", "--dataset", "--data_dir", "--model_dir", "--epochs", "--batch_size",
                 "--steps_per_epoch", "--seed", "--onednn"):
        assert flag in result.stdout
    assert "--onednn" in run_main("predict", "--help").stdout  # every command that loads TensorFlow


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """Three epochs of `train` on synthetic data (shared by the tests that read a trained run)."""
    model_dir = os.path.join(tmp_path_factory.mktemp("synthetic"), "run")
    result = run_main("train", "--model=cifar", "--dataset=synthetic", "--num_classes=3",
                      "--synthetic_examples=256", "--batch_size=32", "--epochs=3",
                      "--learning_rate=0.01", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


def test_train_synthetic_loss_falls(synthetic_run):
    model_dir = synthetic_run
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
    from test_tensorboard import check_training_pictures
    check_training_pictures(model_dir, seed=0, num_classes=3, synthetic_examples=256, batch_size=32,
                            epochs=3)
    # The saved best and latest weights score what the epochs logged for them.
    for checkpoint, expected in (("best", max(r["val_top1"] for r in summary["history"])),
                                 ("latest", summary["history"][-1]["val_top1"])):
        result = run_main("evaluate", f"--model_dir={model_dir}", f"--checkpoint={checkpoint}")
        assert result.returncode == 0, result.stderr[-3000:]
        with open(os.path.join(model_dir, "eval.json")) as f:
            assert json.load(f)["top1"] == pytest.approx(expected, abs=1e-6), checkpoint


def test_model_dir_that_is_a_file(tmp_path):
    path = os.path.join(tmp_path, "afile")
    open(path, "w").close()
    result = run_main("train", "--dataset=synthetic", f"--model_dir={path}", "--epochs=1")
    assert result.returncode == 1
    assert "is a file" in result.stderr
    assert "Traceback" not in result.stderr


def test_evaluate_writes_metrics(synthetic_run):
    model_dir = synthetic_run
    result = run_main("evaluate", f"--model_dir={model_dir}", "--tta=10crop")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, "eval.json")) as f:
        metrics = json.load(f)
    assert metrics["tta"] == "10crop" and metrics["count"] > 0
    assert len(metrics["per_class"]) == 3 and len(metrics["confusion"]) == 3
    assert sum(map(sum, metrics["confusion"])) == metrics["count"]
    assert os.path.isfile(os.path.join(model_dir, "confusion.png"))
    assert f"top1 {metrics['top1']:.4f}" in result.stdout


def test_evaluate_without_a_run(tmp_path):
    result = run_main("evaluate", f"--model_dir={tmp_path}")
    assert result.returncode == 1
    assert "holds no training run" in result.stderr and "Traceback" not in result.stderr


CPP_LOG_SAMPLE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796320715.496393    3277 port.cc:153] oneDNN custom operations are on.\n",
    "W1203 17:56:01.250000    3277 gpu_device.cc:2344] Cannot dlopen some GPU libraries.\n",
    "E0000 00:00:1796320717.938392    3277 cuda_platform.cc:52] failed call to cuInit: UNKNOWN ERROR\n",
    "F1203 17:56:02.000001    3277 status.cc:10] Check failed: x\n",
    "/usr/lib/python3/warnings.py:1: UserWarning: I0000 is not a log line here\n",
]


@pytest.mark.parametrize("min_level, kept", [
    (0, [0, 1, 2, 3, 4, 5]),
    (1, [2, 3, 4, 5]),
    (2, [3, 4, 5]),
    (3, [4, 5]),
])
def test_filter_cpp_log_follows_tf_cpp_min_log_level(min_level, kept):
    from alexnet_tf import tf_startup
    text = "".join(CPP_LOG_SAMPLE)
    assert tf_startup.filter_cpp_log(text, min_level) == "".join(CPP_LOG_SAMPLE[i] for i in kept)
    # Without a CUDA driver the cuInit failure is expected and goes too (from level 1 on).
    no_driver = text + "I0000 00:00:1.5    3277 cudart_stub.cc:31] Could not find cuda drivers\n"
    expected = [CPP_LOG_SAMPLE[i] for i in kept if min_level == 0 or i != 3]
    expected += [no_driver.splitlines(keepends=True)[-1]] if min_level == 0 else []
    assert tf_startup.filter_cpp_log(no_driver, min_level) == "".join(expected)


def test_tensorflow_start_up_lines_are_hidden_by_default(tmp_path):
    env = cli_env()
    del env["TF_CPP_MIN_LOG_LEVEL"]  # main.py's default (2) applies
    result = run_main("evaluate", f"--model_dir={tmp_path}", env=env)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("Error: ") and "holds no training run" in lines[-1]
    assert not [line for line in lines if re.match(r"[IW]\d{4} ", line)], result.stderr
    assert "absl::InitializeLog" not in result.stderr


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains(tmp_path, precision):
    model_dir = os.path.join(tmp_path, "run")
    # Batch 4: CPUs have no fast float16 kernels (a batch-16 cifar step takes ~11 s on 2 cores).
    result = run_main("train", "--dataset=synthetic", "--num_classes=3", "--synthetic_examples=16",
                      "--batch_size=4", "--epochs=1", "--steps_per_epoch=2", f"--precision={precision}",
                      f"--model_dir={model_dir}")
    from alexnet_tf import cpu_info
    if precision.removeprefix("mixed_") in cpu_info.detect().capped_dtypes:
        # ONEDNN_MAX_CPU_ISA took the type's kernels away: refused in one line, nothing written.
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-3000:]
        assert "ONEDNN_MAX_CPU_ISA" in result.stderr and not os.path.exists(os.path.join(model_dir, "ckpt"))
        return
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(model_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["history"][0]["loss"] > 0 and summary["flags"]["precision"] == precision
    assert summary["precision"] == precision and f"Precision: {precision}" in result.stdout
    # bfloat16 asked for on a CPU without bfloat16 units warns that it is emulated (slow).
    from alexnet_tf.distribute import cpu_has_bfloat16
    warned = "oneDNN emulates bfloat16" in result.stderr
    assert warned == (precision == "mixed_bfloat16" and not cpu_has_bfloat16()), result.stderr[-2000:]


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model_dir = os.path.join(tmp_path, "run")
    result = run_main("train", "--dataset=synthetic", "--num_classes=3", "--synthetic_examples=640",
                      "--batch_size=16", "--epochs=2", "--checkpoint_every_steps=1", "--learning_rate=1e9",
                      f"--model_dir={model_dir}")
    assert result.returncode == 1
    assert re.search(r"(training loss|a weight) became (nan|inf|-inf|NaN or infinite)", result.stderr, re.I)
    assert "last good checkpoint is kept" in result.stderr and "Traceback" not in result.stderr
    # The kept checkpoint holds finite weights.
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "ckpt"))
    assert latest is not None
    reader = tf.train.load_checkpoint(latest)
    floats = [name for name, dtype in reader.get_variable_to_dtype_map().items() if dtype.is_floating]
    assert len(floats) >= 16
    for name in floats:
        assert np.all(np.isfinite(reader.get_tensor(name))), name
