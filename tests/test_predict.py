"""`predict` on exported artifacts, and the export / predict commands end to end."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

from export import predict
from test_export_common import CLASS_NAMES, encode, make_run, random_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run exported with `main.py export --format=all` (in-process), and a folder of files."""
    import main

    root = tmp_path_factory.mktemp("predict")
    model_dir, model = make_run(root / "run", seed=5)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    pixels = random_images(2, 40, 56, seed=9)
    (images / "a.jpg").write_bytes(encode(pixels[0], "JPEG", quality=95))
    (images / "sub" / "b.png").write_bytes(encode(pixels[1], "PNG"))
    (images / "notes.txt").write_text("not an image")
    # The run names no dataset: int8 calibrates on the images of --data_dir.
    argv = main.FLAGS(["main.py", "export", f"--model_dir={model_dir}", "--format=all",
                       f"--data_dir={images}"])
    try:
        main.main(argv)
    finally:
        main.FLAGS.unparse_flags()
    export_dir = os.path.join(model_dir, "export")
    return {"model_dir": model_dir, "images": str(images),
            "saved_model": os.path.join(export_dir, "alexnet_cifar", "1"),
            "tflite": os.path.join(export_dir, "alexnet_cifar_float32.tflite")}


def test_export_all_writes_the_saved_model_every_tflite_form_and_the_keras_file(exported):
    assert os.path.isfile(os.path.join(exported["saved_model"], "saved_model.pb"))
    assert os.path.isfile(os.path.join(exported["saved_model"], "assets.extra",
                                       "tf_serving_warmup_requests"))
    for form in ("float32", "float16", "dynamic", "int8"):
        path = exported["tflite"].replace("float32", form)
        assert os.path.isfile(path), form
        assert os.path.isfile(path.replace(".tflite", ".labels.txt")), form
    keras_path = os.path.join(os.path.dirname(exported["tflite"]), "alexnet_cifar.keras")
    assert os.path.isfile(keras_path) and os.path.isfile(keras_path.replace(".keras", ".labels.txt"))


def test_export_all_without_calibration_images_writes_nothing(tmp_path):
    from helpers import run_main
    model_dir, _ = make_run(tmp_path / "run")
    result = run_main("export", f"--model_dir={model_dir}", "--format=all")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "--data_dir" in result.stderr and "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(model_dir, "export"))


@pytest.mark.parametrize("kind", ["saved_model", "tflite"])
def test_predict_files_classifies_images_and_reports_the_rest(exported, kind):
    results, failures = predict.predict_files(exported[kind], [exported["images"]])
    assert [os.path.basename(r.path) for r in results] == ["a.jpg", "b.png"]
    assert [(os.path.basename(p), reason) for p, reason in failures] == [
        ("notes.txt", "not a decodable image (JPEG, PNG, GIF, BMP or WebP)")]
    for result in results:
        assert len(result.top_k) == 3  # min(top_k, classes)
        assert sorted(name for name, _, _ in result.top_k) == sorted(CLASS_NAMES)
        probs = [p for _, _, p in result.top_k]
        assert probs == sorted(probs, reverse=True)
        assert abs(sum(probs) - 1.0) < 1e-4
        for name, index, _ in result.top_k:
            assert CLASS_NAMES[index] == name


def test_saved_model_and_tflite_agree(exported):
    files = [os.path.join(exported["images"], "a.jpg"), os.path.join(exported["images"], "sub", "b.png")]
    sm, _ = predict.predict_files(exported["saved_model"], files)
    tfl, _ = predict.predict_files(exported["tflite"], files)
    for a, b in zip(sm, tfl):
        assert [i for _, i, _ in a.top_k] == [i for _, i, _ in b.top_k]
        np.testing.assert_allclose([p for *_, p in a.top_k], [p for *_, p in b.top_k], atol=1e-4)


def test_base_folder_means_the_highest_version(exported):
    base = os.path.dirname(exported["saved_model"])
    classifier = predict.load_classifier(base)
    assert classifier.path == exported["saved_model"]


def test_missing_file_is_a_failure_not_an_exception(exported):
    results, failures = predict.predict_files(exported["tflite"], ["/nonexistent/x.png"])
    assert results == [] and len(failures) == 1 and "No such file" in failures[0][1]


def test_bad_artifacts(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match="No model at"):
        predict.predict_files(str(tmp_path / "none.tflite"), [])
    (tmp_path / "dir.tflite").mkdir()
    with pytest.raises(ValueError, match="is a folder, not a .tflite file"):
        predict.predict_files(str(tmp_path / "dir.tflite"), [])
    with pytest.raises(ValueError, match="neither a SavedModel folder"):
        predict.predict_files(str(tmp_path), [])
    with pytest.raises(ValueError, match="`top_k` must be a positive integer"):
        predict.predict_files(exported["tflite"], [], top_k=0)


def test_print_predictions_format():
    out, err = io.StringIO(), io.StringIO()
    predict.print_predictions([predict.Prediction("x.jpg", [("cat", 0, 0.75), ("dog", 1, 0.25)])],
                              [("y.txt", "not a decodable image")], out, err)
    assert out.getvalue().splitlines() == ["x.jpg", "  1.  75.00%  cat (0)", "  2.  25.00%  dog (1)"]
    assert err.getvalue() == "Error: y.txt: not a decodable image\n"


def test_predict_command_exit_status(exported):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"), "predict", f"--artifact={exported['tflite']}",
         exported["images"]], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"Error: {os.path.join(exported['images'], 'notes.txt')}: not a decodable image" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("a.jpg") and lines[4].endswith("b.png") and len(lines) == 8


def test_export_command_errors(exported, capsys):
    import main

    cases = [
        (["--model_dir=" + os.path.dirname(exported["images"]) + "/nothing"], "no training run"),
        # A version is never replaced (a rerun of the same export keeps its files: test_export_rerun.py).
        (["--model_dir=" + exported["model_dir"], "--version=1"], "already exists"),
    ]
    for flags, message in cases:
        argv = main.FLAGS(["main.py", "export", *flags])
        try:
            with pytest.raises(SystemExit) as exit_info:
                main.main(argv)
        finally:
            main.FLAGS.unparse_flags()
        assert exit_info.value.code == 1
        assert message in capsys.readouterr().err


def _run_main(*args):
    import main

    argv = main.FLAGS(["main.py", *args])
    try:
        main.main(argv)
    finally:
        main.FLAGS.unparse_flags()


def test_int8_export_calibrated_from_flags_then_predict(exported, capsys):
    _run_main("export", f"--model_dir={exported['model_dir']}", "--format=tflite", "--quantize=int8",
              "--lrn=decomposed", "--dataset=synthetic", "--calibration_steps=16")
    path = os.path.join(exported["model_dir"], "export", "alexnet_cifar_lrn-decomposed_int8.tflite")
    assert f"TFLite: {path}" in capsys.readouterr().out
    results, failures = predict.predict_files(path, [os.path.join(exported["images"], "a.jpg")])
    assert len(results) == 1 and not failures
    float_results, _ = predict.predict_files(exported["tflite"], [os.path.join(exported["images"], "a.jpg")])
    by_index = lambda result: [p for _, _, p in sorted(result.top_k, key=lambda t: t[1])]
    np.testing.assert_allclose(by_index(results[0]), by_index(float_results[0]), atol=0.05)


@pytest.mark.parametrize("args, message", [
    (("export", "--model_dir=x", "--quantize=int8"), "apply to --format=tflite or all"),
    (("export", "--model_dir=x", "--format=tflite", "--version=2"), "--version applies to"),
    (("export",), "needs --model_dir"),
    (("predict", "--artifact=x"), "needs image files"),
    (("predict", "a.jpg"), "needs --artifact"),
])
def test_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _run_main(*args)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
