"""An interrupted export finishes on rerun: complete artifacts are kept, missing ones written,
a killed export's staging files removed; --overwrite replaces; SavedModel versions never are."""

import os
import signal
import subprocess
import sys
import time

import pytest

from export import artifacts, saved_model
from helpers import cli_env, main_command, ROOT
from test_export_common import make_run


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _files(folder):
    return sorted(os.path.relpath(os.path.join(p, n), folder)
                  for p, dirs, files in os.walk(folder) for n in dirs + files)


def test_export_killed_mid_way_finishes_on_rerun(tmp_path):
    model_dir, _ = make_run(tmp_path / "run", seed=3)
    export_dir = os.path.join(model_dir, "export")
    command = main_command("export", f"--model_dir={model_dir}", "--format=all", "--quantize=float16")
    proc = subprocess.Popen(command, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    version_1 = os.path.join(export_dir, "alexnet_cifar", "1")
    deadline = time.time() + 240
    while not os.path.isdir(version_1) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # after the SavedModel, during the TFLite conversion
    proc.communicate()
    tflite_path = os.path.join(export_dir, "alexnet_cifar_float16.tflite")
    if os.path.isfile(tflite_path):
        pytest.fail("the export finished before it could be killed; the test needs a slower step")
    pb_mtime = os.path.getmtime(os.path.join(version_1, "saved_model.pb"))

    rerun = subprocess.run(command, cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"SavedModel: {version_1} (kept: already exported from these weights)" in rerun.stdout
    assert f"TFLite: {tflite_path}\n" in rerun.stdout
    assert saved_model.existing_versions(os.path.join(export_dir, "alexnet_cifar")) == [1]
    assert os.path.getmtime(os.path.join(version_1, "saved_model.pb")) == pb_mtime
    assert not [n for n in _files(export_dir) if ".tmp-" in n], _files(export_dir)


def test_rerun_keeps_what_is_complete_and_overwrite_replaces(tmp_path):
    model_dir, _ = make_run(tmp_path / "run", seed=4)
    lines = []
    first = artifacts.export_run(model_dir, fmt="tflite", report=lines.append)
    path = first[0]
    mtime = os.path.getmtime(path)
    stale = os.path.join(os.path.dirname(path), f".tmp-{_dead_pid()}-x.tflite")
    with open(stale, "wb") as f:
        f.write(b"half")
    live = os.path.join(os.path.dirname(path), f".tmp-{os.getpid()}-y.tflite")  # a running export's
    with open(live, "wb") as f:
        f.write(b"busy")

    lines.clear()
    assert artifacts.export_run(model_dir, fmt="tflite", report=lines.append) == [path]
    assert lines == [f"TFLite: {path} (kept: already exported from these weights)"]
    assert os.path.getmtime(path) == mtime
    assert not os.path.exists(stale) and os.path.exists(live)

    lines.clear()
    time.sleep(0.01)
    artifacts.export_run(model_dir, fmt="tflite", overwrite=True, report=lines.append)
    assert lines == [f"TFLite: {path} (replaced)"] and os.path.getmtime(path) > mtime
    # Weights newer than the artifact: made again without --overwrite.
    os.utime(os.path.join(model_dir, "best.weights.h5"), (time.time() + 5, time.time() + 5))
    lines.clear()
    artifacts.export_run(model_dir, fmt="tflite", report=lines.append)
    assert lines == [f"TFLite: {path} (replaced)"]
    assert sorted(n for n in os.listdir(os.path.dirname(path)) if not n.startswith(".tmp-")) == [
        "alexnet_cifar_float32.labels.txt", "alexnet_cifar_float32.tflite"]
