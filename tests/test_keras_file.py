""".keras files: `keras.saving.load_model` in a fresh process after `import alexnet_tf` (which
still loads no TensorFlow by itself), and `export --format=keras` (beside the other artifacts,
never overwriting one)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from alexnet_tf.model import build_alexnet
from export import keras_file
from helpers import ROOT, cli_env, run_main
from test_export_common import CLASS_NAMES, make_run


def python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=cli_env(**env), timeout=300)


@pytest.mark.parametrize("module", ["alexnet_tf", "alexnet_tf.cpu_info"])
def test_import_loads_no_tensorflow(module):
    result = python(f"import {module}, sys; "
                    "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("keras_file")
    model = build_alexnet("cifar", 10, seed=4)
    path = str(root / "m.keras")
    model.save(path)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.save(root / "x.npy", x)
    return {"root": root, "path": path, "x": x, "expected": np.asarray(model(x))}


@pytest.mark.parametrize("imports", ["alexnet_tf, keras", "keras, alexnet_tf"])
def test_keras_file_loads_in_a_fresh_process(saved, imports):
    out = saved["root"] / f"out-{imports.split(',')[0]}.npy"
    result = python(
        f"import {imports}, numpy as np; "
        f"m = keras.saving.load_model({saved['path']!r}); "
        f"np.save({str(out)!r}, np.asarray(m(np.load({str(saved['root'] / 'x.npy')!r})))); "
        "print([l.name for l in m.layers if type(l).__name__ == 'LocalResponseNormalization'])")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "['lrn1', 'lrn2']"
    np.testing.assert_array_equal(np.load(out), saved["expected"])


def test_export_keras_beside_the_other_artifacts(tmp_path):
    model_dir, model = make_run(tmp_path / "run", seed=6)
    path = keras_file.export_keras(model_dir)
    assert path == os.path.join(model_dir, "export", "alexnet_cifar.keras")
    with open(os.path.join(model_dir, "export", "alexnet_cifar.labels.txt")) as f:
        assert f.read().splitlines() == CLASS_NAMES
    x = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert loaded.layers[-1].name == "fc8"
    before = (os.path.getmtime(path), os.path.getsize(path))
    with pytest.raises(FileExistsError, match="alexnet_cifar.keras' already exists"):
        keras_file.export_keras(model_dir)
    assert (os.path.getmtime(path), os.path.getsize(path)) == before
    named = keras_file.export_keras(model_dir, str(tmp_path / "out"), model_name="net")
    assert named == str(tmp_path / "out" / "net.keras")
    for folder in (os.path.dirname(path), str(tmp_path / "out")):
        assert not [n for n in os.listdir(folder) if n.startswith(".tmp")]


def test_cli_export_format_keras(tmp_path):
    model_dir, _ = make_run(tmp_path / "run", seed=7)
    result = run_main("export", f"--model_dir={model_dir}", "--format=keras")
    path = os.path.join(model_dir, "export", "alexnet_cifar.keras")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Keras: {path}" in result.stdout and os.path.isfile(path)


@pytest.mark.parametrize("flag", ["--version=2", "--quantize=int8"])
def test_cli_export_format_keras_refuses_other_formats_flags(flag):
    result = run_main("export", "--model_dir=x", "--format=keras", flag)
    assert result.returncode == 1 and flag.split("=")[0] in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
