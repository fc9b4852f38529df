"""TFLite files in MediaPipe Tasks' ImageClassifier: the metadata every export carries, and
each form's top class and scores against the SavedModel's `serving_default`."""

import ast
import logging
import os

import keras
import mediapipe as mp
import numpy as np
import pytest
import tensorflow as tf
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions
from PIL import Image

from alexnet_tf import rundir
from alexnet_tf.model import build_alexnet
from export import saved_model, tflite, tflite_metadata
from export.predict import TFLiteClassifier
from test_export_common import CLASS_NAMES, make_run, separable_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (quantize, lrn): every precision, and each LRN form in float and in int8.
FORMS = [("none", "builtin"), ("float16", "decomposed"), ("dynamic", "builtin"),
         ("int8", "builtin"), ("int8", "decomposed")]
# Largest |MediaPipe score - SavedModel probability| measured on these images and weights:
# float32 1.9e-6, float16 2.3e-3, dynamic 2.6e-2, int8 7.6e-2 (builtin LRN) and 8.0e-2
# (decomposed). The LiteRT interpreter gives the same scores: they are the forms' own
# rounding, and int8 scores are multiples of 1/256.
SCORE_TOLERANCE = {"none": 1e-5, "float16": 1e-2, "dynamic": 5e-2, "int8": 0.12}


def fit_readout(model, images, labels, logit_scale=3.0):
    """Sets fc8 to the least-squares readout of fc7's features, so the random-feature
    model separates the generated classes with probabilities well below 1."""
    features = keras.Model(model.inputs, model.get_layer("fc7").output)
    f = features.predict(images.astype(np.float32), verbose=0)
    f = np.concatenate([f, np.ones((len(f), 1), np.float32)], axis=1)
    num_classes = int(labels.max()) + 1
    targets = logit_scale * (np.eye(num_classes)[labels] - 1.0 / num_classes)
    w, *_ = np.linalg.lstsq(f, targets, rcond=1e-6)
    model.get_layer("fc8").set_weights([w[:-1].astype(np.float32), w[-1].astype(np.float32)])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A cifar run with a fitted readout, its SavedModel's answers on 30 images, and exports."""
    root = tmp_path_factory.mktemp("mediapipe")
    model = build_alexnet("cifar", len(CLASS_NAMES), seed=0)
    train_x, train_y = separable_images(192, len(CLASS_NAMES), seed=0)
    fit_readout(model, train_x, train_y)
    model_dir, _ = make_run(root / "run", model=model)
    images, labels = separable_images(30, len(CLASS_NAMES), seed=1)
    loaded = tf.saved_model.load(saved_model.export_saved_model(model_dir))
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    return {"model_dir": model_dir, "train_x": train_x, "images": images, "labels": labels,
            "probabilities": out["probabilities"].numpy(),
            "names": [n.decode() for n in out["class_names"].numpy()], "paths": {}}


def export(run, quantize="none", lrn="builtin", batch=1):
    """Exports (once per module) and returns the .tflite path."""
    key = (quantize, lrn, batch)
    if key not in run["paths"]:
        run["paths"][key] = tflite.export_tflite(
            run["model_dir"], quantize=quantize, lrn=lrn, batch=batch,
            calibration_data=[run["train_x"][i:i + 32] for i in range(0, 96, 32)],
            calibration_steps=96)
    return run["paths"][key]


def classifier(path):
    options = vision.ImageClassifierOptions(base_options=BaseOptions(model_asset_path=path),
                                            running_mode=vision.RunningMode.IMAGE)
    return vision.ImageClassifier.create_from_options(options)


def classify(path, images, num_classes=len(CLASS_NAMES)):
    """MediaPipe's answers: (top category names, scores [n, classes] by category index)."""
    names, scores = [], np.zeros((len(images), num_classes), np.float32)
    with classifier(path) as c:
        for i, image in enumerate(images):
            result = c.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                         data=np.ascontiguousarray(image)))
            categories = result.classifications[0].categories
            names.append(categories[0].category_name)
            for category in categories:
                scores[i, category.index] = category.score
    return names, scores


def test_the_reference_model_is_not_trivial(run):
    probabilities = run["probabilities"]
    assert np.mean(probabilities.argmax(1) == run["labels"]) == 1.0
    assert len(set(run["names"])) == len(CLASS_NAMES)  # every class is someone's top class
    assert np.median(probabilities.max(1)) < 0.95      # and the scores are not saturated
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    assert np.min(top2[:, 1] - top2[:, 0]) > 0.1       # so the top class is well defined


@pytest.mark.parametrize("quantize,lrn", FORMS)
def test_top_class_and_scores_match_the_saved_model(run, quantize, lrn):
    path = export(run, quantize, lrn)
    names, scores = classify(path, run["images"])
    assert names == run["names"]
    assert np.max(np.abs(scores - run["probabilities"])) <= SCORE_TOLERANCE[quantize]
    # The same file in the bare LiteRT interpreter, fed `eval_images` pixels: MediaPipe hands
    # the model the same raw pixels (a wrong normalisation would move every score).
    litert = TFLiteClassifier(path)
    np.testing.assert_allclose(scores, [litert(image) for image in run["images"]], atol=1e-6)


@pytest.mark.parametrize("quantize,lrn", [("none", "builtin"), ("int8", "decomposed")])
def test_metadata_fields(run, quantize, lrn):
    path = export(run, quantize, lrn)
    meta = tflite_metadata.read_metadata(path)
    assert meta["name"] == "alexnet_cifar"
    assert meta["author"] == tflite_metadata.AUTHOR and "license" not in meta
    weights = os.path.join(run["model_dir"], rundir.WEIGHTS["best"])
    assert meta["version"] == tflite_metadata.weights_version(weights, "best")
    assert meta["version"].startswith("best weights sha256:")
    assert "softmax" in meta["description"] and "32x32 RGB" in meta["description"]
    ops = {op.name for op in tflite.op_list(path)}
    if lrn == "decomposed":  # the description names the ops the file has
        assert "LRN decomposed into MUL, CONV_2D, LOG and EXP" in meta["description"]
        assert {"MUL", "CONV_2D", "LOG", "EXP"} <= ops
    else:
        assert "LOCAL_RESPONSE_NORMALIZATION" in meta["description"]
        assert "LOCAL_RESPONSE_NORMALIZATION" in ops
    assert meta["min_parser_version"] == "1.0.0"
    (image,) = meta["subgraph_metadata"][0]["input_tensor_metadata"]
    (output,) = meta["subgraph_metadata"][0]["output_tensor_metadata"]
    assert image["content"]["content_properties"]["color_space"] == "RGB"
    assert image["stats"] == {"max": [255.0], "min": [0.0]}  # raw pixels reach the model
    units = image.get("process_units", [])
    if quantize == "int8":
        assert units == []
    else:
        assert units == [{"options_type": "NormalizationOptions",
                          "options": {"mean": [0.0], "std": [1.0]}}]
    assert output["name"] == "probabilities" and "softmax" in output["description"]
    assert output["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    assert tflite_metadata.packed_labels(path) == CLASS_NAMES
    with open(tflite.labels_path_for(path)) as f:  # the labels file beside stays
        assert f.read().splitlines() == CLASS_NAMES


def bare_float32(run):
    """The float32 conversion without metadata (once per module)."""
    if "bare" not in run:
        run["bare"] = tflite.convert(rundir.load_trained_model(run["model_dir"])[0], "cifar")
    return run["bare"]


def test_metadata_adds_about_a_kilobyte(run):
    path = export(run)
    bare = bare_float32(run)
    assert 0 < os.path.getsize(path) - len(bare) < 2048
    # The bare file is what MediaPipe refused before: a float input needs normalisation.
    bare_path = os.path.join(os.path.dirname(path), "bare.tflite")
    with open(bare_path, "wb") as f:
        f.write(bare)
    with pytest.raises(Exception, match="NormalizationOptions"):
        classifier(bare_path)


def test_batch_two_export_warns_and_mediapipe_refuses(run, caplog):
    with caplog.at_level(logging.WARNING, logger="export.tflite"):
        path = export(run, "none", "decomposed", batch=2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{os.path.basename(path)}: MediaPipe's ImageClassifier refuses it: it "
                        "takes a batch of 1 and this input is [2, 32, 32, 3] (export with a "
                        "batch of 1 for it)."]
    assert tflite_metadata.packed_labels(path) == CLASS_NAMES  # the metadata is there all the same
    with pytest.raises(ValueError, match="1 x height x width"):
        classifier(path)


def test_int8_input_that_is_not_the_pixels_warns(run, tmp_path, caplog):
    # Calibration images without dark or bright pixels: the uint8 input's scale is not 1.
    dull = (40 + run["train_x"][:64] // 2).astype(np.uint8)
    with caplog.at_level(logging.WARNING, logger="export.tflite"):
        tflite.export_tflite(run["model_dir"], str(tmp_path), quantize="int8", lrn="decomposed",
                             calibration_data=[dull], calibration_steps=64)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "feeds raw uint8 pixels" in warning and "zero point" in warning


def test_add_metadata_errors(run):
    bare = bare_float32(run)
    with pytest.raises(ValueError, match="2 class names for an output of 3 classes"):
        tflite_metadata.add_metadata(bare, model_name="m", model_description="d", version="v",
                                     class_names=["a", "b"])


@pytest.mark.parametrize("features,version", [
    ({}, "1.0.0"),
    ({"vocabulary": True}, "1.0.1"),
    ({"input_process_units": True}, "1.1.0"),
    ({"regex": True, "vocabulary": True}, "1.2.1"),
    ({"file_version": True}, "1.4.1"),
    ({"custom": True, "regex": True}, "1.5.0"),
])
def test_minimum_parser_version_follows_the_schema_history(features, version):
    import flatbuffers
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    labels = fb.AssociatedFileT()
    labels.name, labels.type = "labels.txt", fb.AssociatedFileType.TENSOR_AXIS_LABELS
    tensor = fb.TensorMetadataT()
    tensor.associatedFiles = [labels]
    subgraph = fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata, subgraph.outputTensorMetadata = [fb.TensorMetadataT()], [tensor]
    if features.get("vocabulary"):
        vocab = fb.AssociatedFileT()
        vocab.name, vocab.type = "vocab.txt", fb.AssociatedFileType.VOCABULARY
        tensor.associatedFiles.append(vocab)
    if features.get("file_version"):
        labels.version = "2"
    if features.get("regex") or features.get("input_process_units"):
        unit = fb.ProcessUnitT()
        if features.get("regex"):
            unit.optionsType, unit.options = (fb.ProcessUnitOptions.RegexTokenizerOptions,
                                              fb.RegexTokenizerOptionsT())
        else:
            unit.optionsType, unit.options = (fb.ProcessUnitOptions.NormalizationOptions,
                                              fb.NormalizationOptionsT())
        if features.get("input_process_units"):
            subgraph.inputProcessUnits = [unit]
        else:
            subgraph.inputTensorMetadata[0].processUnits = [unit]
    if features.get("custom"):
        subgraph.customMetadata = [fb.CustomMetadataT()]
    root = fb.ModelMetadataT()
    root.subgraphMetadata = [subgraph]
    builder = flatbuffers.Builder(0)
    builder.Finish(root.Pack(builder), b"M001")
    assert tflite_metadata.minimum_parser_version(builder.Output()) == version


def docs_python_snippet() -> str:
    """The Python code block of docs/serving.md's MediaPipe section."""
    with open(os.path.join(ROOT, "docs", "serving.md"), encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("### Mobile: MediaPipe Tasks"):]
    return section[section.index("```python\n") + len("```python\n"):].split("\n```", 1)[0]


def test_the_python_snippet_of_the_docs(run, tmp_path, capsys):
    path = export(run, "int8", "decomposed")
    Image.fromarray(run["images"][0]).save(tmp_path / "cat.png")
    code = docs_python_snippet()
    assert "alexnet_cifar_lrn-decomposed_int8.tflite" in code and "cat.png" in code
    code = (code.replace("alexnet_cifar_lrn-decomposed_int8.tflite", path)
            .replace("cat.png", str(tmp_path / "cat.png")))
    exec(code, {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(CLASS_NAMES)  # max_results=3
    assert printed[0].split()[0] == run["names"][0]


def test_only_the_tflite_export_imports_mediapipe():
    """Train, evaluate and predict never load MediaPipe: it is imported inside functions of
    export/tflite_metadata.py, which export/tflite.py imports inside `export_tflite`."""
    files = [os.path.join(ROOT, "main.py")] + [
        os.path.join(folder, name) for package in ("alexnet_tf", "data_pipeline", "export")
        for folder, _, names in os.walk(os.path.join(ROOT, package)) for name in names
        if name.endswith(".py")]
    for path in files:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        for node in top_level:
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names])
            assert not [m for m in modules if m.startswith("mediapipe")
                        or m.endswith("tflite_metadata")], (path, modules)
