""".keras files: `keras.saving.load_model` in a fresh process after `import alexnet_tf` (which
still loads no TensorFlow by itself)."""

import subprocess
import sys

import numpy as np
import pytest

from alexnet_tf.model import build_alexnet
from helpers import ROOT, cli_env


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
