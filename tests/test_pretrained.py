"""torchvision's AlexNet weights: layout conversion against a NumPy NCHW forward, `convert`
end to end (file -> run folder -> SavedModel, predict, evaluate), and its errors."""

import io
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import torchvision_reference as ref
from alexnet_tf import pretrained
from alexnet_tf.model import build_alexnet
from helpers import run_main
from torch_files import write_state_dict


@pytest.fixture(scope="module")
def state_dict():
    return ref.random_state_dict(seed=3)


def structured_image(height, width, seed):
    """Smooth colour gradients plus noise: a photo-like uint8 image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([200 * xx, 180 * yy, 120 + 100 * np.sin(6 * xx * yy)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def test_imagenet_classes_are_torchvisions():
    wnids, names = pretrained.imagenet_classes()
    assert len(wnids) == len(names) == 1000 == len(set(names)) == len(set(wnids))
    assert (names[0], names[1], names[-1]) == ("tench", "goldfish", "toilet tissue")
    assert wnids[0] == "n01440764" and wnids == sorted(wnids)  # torchvision indexes sorted wnids


def test_converted_keras_model_equals_numpy_nchw_forward(state_dict):
    model = build_alexnet("owt", 1000, mean=[255 * m for m in ref.MEAN],
                          std=[255 * s for s in ref.STD])
    for name, values in pretrained.keras_weights(state_dict, model).items():
        model.get_layer(name).set_weights(values)
    crops = np.stack([structured_image(224, 224, seed=s) for s in (0, 1)])
    expected = ref.forward(state_dict, crops)
    logits = model(crops.astype(np.float32), training=False).numpy()
    scale = np.abs(expected).max()
    np.testing.assert_allclose(logits, expected, atol=1e-4 * scale)
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), ref.softmax(expected), atol=1e-4)


def test_wrong_keys_and_shapes_are_named(state_dict):
    model = build_alexnet("owt", 1000)
    missing = {k: v for k, v in state_dict.items() if k != "features.3.bias"}
    with pytest.raises(ValueError, match=r"lack 'features.3.bias'"):
        pretrained.keras_weights(missing, model)
    extra = dict(state_dict, **{"features.1.running_mean": np.zeros(64, np.float32)})
    with pytest.raises(ValueError, match=r"'features.1.running_mean'.*not an AlexNet"):
        pretrained.keras_weights(extra, model)
    reshaped = dict(state_dict, **{"classifier.1.weight": np.zeros((4096, 9215), np.float32)})
    with pytest.raises(ValueError, match=r"'classifier.1.weight' has shape \[4096, 9215\].*\[4096, 9216\]"):
        pretrained.keras_weights(reshaped, model)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, state_dict):
    """The state dict in PyTorch's legacy format (as torchvision publishes it), converted with
    the CLI, exported as a SavedModel."""
    root = tmp_path_factory.mktemp("pretrained")
    weights = str(root / "alexnet-owt-random.pth")
    write_state_dict(weights, state_dict, legacy=True)
    run = str(root / "imagenet")
    result = run_main("convert", f"--weights={weights}", f"--model_dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    exported = run_main("export", f"--model_dir={run}")
    assert exported.returncode == 0, exported.stderr[-3000:]
    return {"root": root, "run": run, "weights": weights, "convert_stdout": result.stdout,
            "saved_model": os.path.join(run, "export", "alexnet_owt", "1")}


def test_convert_writes_a_run_folder(converted):
    with open(os.path.join(converted["run"], "run.json")) as f:
        info = json.load(f)
    assert info["variant"] == "owt" and info["num_classes"] == 1000
    assert info["class_names"][0] == "tench" and info["class_ids"][0] == "n01440764"
    assert info["model_kwargs"]["mean"] == pytest.approx([123.675, 116.28, 103.53])
    assert info["model_kwargs"]["std"] == pytest.approx([58.395, 57.12, 57.375])
    for name in ("best.weights.h5", "latest.weights.h5"):
        assert os.path.isfile(os.path.join(converted["run"], name))
    assert "61,100,840 parameters" in converted["convert_stdout"]
    assert not [n for n in os.listdir(converted["root"]) if n.startswith(".tmp")]


def test_saved_model_equals_torchvision_on_the_centre_crop(converted, state_dict):
    image = structured_image(256, 256, seed=7)
    expected = ref.softmax(ref.forward(state_dict, image[None, 16:240, 16:240]))
    loaded = tf.saved_model.load(converted["saved_model"])
    out = loaded.signatures["serving_default"](images=tf.constant(image[None]))
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-4)
    top = int(np.argmax(expected))
    assert out["classes"].numpy()[0] == top
    assert out["class_names"].numpy()[0].decode() == pretrained.imagenet_classes()[1][top]


def test_predict_prints_imagenet_names(converted, state_dict, tmp_path):
    image = structured_image(256, 256, seed=8)
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    result = run_main("predict", f"--artifact={converted['saved_model']}", "--top_k=1", str(path))
    assert result.returncode == 0, result.stderr[-3000:]
    top = int(np.argmax(ref.forward(state_dict, image[None, 16:240, 16:240])))
    assert f"{pretrained.imagenet_classes()[1][top]} ({top})" in result.stdout


def test_evaluate_maps_wordnet_id_and_name_folders(converted, tmp_path):
    wnids, names = pretrained.imagenet_classes()
    tree = tmp_path / "imagenet-val"
    for k, folder in enumerate((wnids[1], names[2], wnids[999])):
        (tree / folder).mkdir(parents=True)
        for j in range(2):
            buffer = io.BytesIO()
            Image.fromarray(structured_image(300, 260, seed=10 * k + j)).save(buffer, "JPEG")
            (tree / folder / f"{j}.jpg").write_bytes(buffer.getvalue())
    result = run_main("evaluate", f"--model_dir={converted['run']}", "--dataset=folder",
                      f"--data_dir={tree}")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(converted["run"], "eval.json")) as f:
        metrics = json.load(f)
    assert metrics["count"] == 6
    rows = np.asarray(metrics["confusion"]).sum(axis=1)
    assert sorted(np.flatnonzero(rows)) == [1, 2, 999] and rows[[1, 2, 999]].tolist() == [2, 2, 2]
    unknown = tmp_path / "other"
    (unknown / "not_a_class").mkdir(parents=True)
    result = run_main("evaluate", f"--model_dir={converted['run']}", "--dataset=folder",
                      f"--data_dir={unknown}")
    assert result.returncode == 1 and "'not_a_class'" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64), "PyTorch"),
    (lambda p: write_state_dict(str(p), {"features.0.weight": np.zeros((64, 3, 11, 11), np.float32)}),
     "lack"),
])
def test_convert_errors_are_one_line_and_write_nothing(tmp_path, make, message):
    weights = tmp_path / "w.pth"
    make(weights)
    run = tmp_path / "run"
    result = run_main("convert", f"--weights={weights}", f"--model_dir={run}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error: ")
    assert message in lines[0], lines
    assert not run.exists() and sorted(os.listdir(tmp_path)) == ["w.pth"]


def test_convert_refuses_a_folder_holding_a_run(converted):
    result = run_main("convert", f"--weights={converted['weights']}", f"--model_dir={converted['run']}")
    assert result.returncode == 1 and "is not empty" in result.stderr


def test_data_parallel_prefix_is_dropped(tmp_path, caplog):
    arrays = {"features.0.weight": np.ones((2, 3), np.float32), "classifier.6.bias": np.arange(4.0)}
    path = tmp_path / "ddp.pth"
    write_state_dict(str(path), {f"module.{k}": v for k, v in arrays.items()})
    with caplog.at_level(logging.INFO, logger="absl"):
        state = pretrained.read_torchvision_state_dict(str(path))
    assert list(state) == list(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(state[key], value)
    said = [r.getMessage() for r in caplog.records if "DataParallel" in r.getMessage()]
    assert len(said) == 1 and str(path) in said[0]
    mixed = tmp_path / "mixed.pth"  # only when every key has it
    write_state_dict(str(mixed), {"module.a": np.zeros(1, np.float32), "b": np.zeros(1, np.float32)})
    assert list(pretrained.read_torchvision_state_dict(str(mixed))) == ["module.a", "b"]
