"""TFLite export (float32, float16, dynamic-range and full-integer int8) and inspection of the result.

An artifact is EXPORT_DIR/<name>_<precision>.tflite with a labels file
<name>_<precision>.labels.txt beside it. Input: [batch, crop, crop, 3] pixels
in [0, 255] after `preprocess.eval_images`: float32 for float32/float16/dynamic,
uint8 for int8 (quantized with the input tensor's scale and zero point).
Output `probabilities` [batch, classes]: float32, or uint8 for int8.
Every file carries TFLite Model Metadata (`tflite_metadata`) with the class names
packed in, so MediaPipe Tasks' ImageClassifier loads it as it is.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import tensorflow as tf

from alexnet_tf import rundir
from alexnet_tf.config import QUANTIZATIONS, TFLITE_LRN_FORMS
from alexnet_tf.layers import LocalResponseNormalization
from alexnet_tf.model import VARIANTS
from data_pipeline import preprocess
from export import common

PRECISION_SUFFIX = {"none": "float32", "float16": "float16", "dynamic": "dynamic", "int8": "int8"}
# Ops that make a TFLite model need the TF runtime or dynamic shapes around Flatten.
UNWANTED_OPS = ("FLEX", "CUSTOM", "SHAPE", "STRIDED_SLICE", "PACK")

_log = logging.getLogger(__name__)


def artifact_name(model_name: str, variant: str, *, quantize: str, lrn: str, batch: int) -> str:
    """The file name of a TFLite export, e.g. `alexnet_cifar_int8.tflite`.

    The LRN form appears only when decomposed and the variant has LRN layers;
    the batch only when it is not 1.
    """
    parts = [model_name]
    if lrn == "decomposed" and VARIANTS[variant].use_lrn:
        parts.append("lrn-decomposed")
    if batch != 1:
        parts.append(f"batch{batch}")
    parts.append(PRECISION_SUFFIX[quantize])
    return "_".join(parts) + ".tflite"


def labels_path_for(tflite_path: str) -> str:
    """The labels file beside a .tflite artifact."""
    return os.path.splitext(tflite_path)[0] + ".labels.txt"


def _image_batches(item) -> np.ndarray:
    images = item[0] if isinstance(item, (tuple, list)) else item
    images = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError("Calibration data must yield [batch, height, width, 3] images "
                         f"(or (images, labels) pairs). Received: shape={images.shape}")
    return images


def calibration_samples(calibration_data: Iterable, variant: str, *, batch: int,
                        steps: int) -> list[np.ndarray]:
    """Eval-preprocessed model inputs for int8 calibration.

    Args:
        calibration_data: an iterable of uint8 stored-size image batches
            [B, S, S, 3], or of (images, labels) pairs (a `tf.data.Dataset` works).
        variant: the model variant (its eval geometry).
        batch: the TFLite model's static batch.
        steps: how many images to use; rounded down to whole batches (at least one).

    Returns:
        float32 [batch, crop, crop, 3] arrays, the representative dataset.

    Raises:
        ValueError: when the data holds fewer than `batch` images or has the wrong shape.
    """
    wanted = max(batch, steps - steps % batch)
    crops = []
    for item in calibration_data:
        images = _image_batches(item)
        crops.extend(np.asarray(preprocess.eval_images(images, variant), dtype=np.float32))
        if len(crops) >= wanted:
            break
    crops = crops[: len(crops) - len(crops) % batch][:wanted]
    if not crops:
        raise ValueError(f"Calibration data gave fewer than {batch} images (the model's batch).")
    return [np.stack(crops[i:i + batch]) for i in range(0, len(crops), batch)]


def calibration_batches(model_dir: str, dataset: str | None = None, data_dir: str | None = None,
                        *, max_images: int = 100, batch_size: int = 32,
                        seed: int | None = None) -> Iterator[np.ndarray]:
    """uint8 stored-size images for int8 calibration: the run's training data, or another source.

    Args:
        model_dir: the training run; its run.json names the dataset unless `dataset` or
            `data_dir` is given.
        dataset, data_dir: another data source (as `main.py --dataset/--data_dir`). A
            `data_dir` without `dataset` may also be any folder of images (a converted
            model's run names no dataset: calibrate it on photos like the ones it will see).
        max_images: how many images to draw.
        batch_size: images per yielded batch.
        seed: seed of the sample (and of synthetic images); defaults to the run's.

    Returns:
        An iterator of uint8 [b, S, S, 3] arrays, the same images on every call. The
        source is opened (and checked) before this returns.

    Raises:
        ValueError: when neither run.json nor the arguments name a dataset, or the
            folder holds no readable image.
        FileNotFoundError: when `data_dir` does not exist.
    """
    from data_pipeline.pipeline import image_folder_batches, load_data

    info = rundir.read_run_info(model_dir)
    config = info.get("config") or {}
    seed = config.get("seed", 0) if seed is None else seed
    if dataset is None and data_dir and not os.path.isdir(os.path.join(data_dir, "train")):
        return _numpy_batches(image_folder_batches(data_dir, info["variant"], max_images=max_images,
                                                   batch_size=batch_size, seed=seed))
    if dataset is None and data_dir:
        dataset = "folder"
    elif dataset is None:
        dataset, data_dir = info.get("dataset"), info.get("data_dir")
    if not dataset:
        raise ValueError(f"run.json of {model_dir!r} names no dataset to calibrate int8 with; "
                         "pass --data_dir=FOLDER of images like those the model will see "
                         "(or --dataset and --data_dir).")
    kwargs = {"seed": seed, "num_classes": int(info["num_classes"])}
    if config.get("synthetic_examples"):
        kwargs["synthetic_examples"] = int(config["synthetic_examples"])
    source = load_data(dataset, data_dir, info["variant"], **kwargs)
    return _numpy_batches(source.sample_images(max_images, batch_size))


def _numpy_batches(dataset) -> Iterator[np.ndarray]:
    for images in dataset:
        yield np.asarray(images)


def convert(model, variant: str, *, quantize: str = "none", batch: int = 1,
            representative: list[np.ndarray] | None = None) -> bytes:
    """Converts a Keras classifier to a TFLite flatbuffer with a softmax output.

    Args:
        model: maps float32 [batch, crop, crop, 3] pixels in [0, 255] to logits.
        variant: the model variant (its crop size).
        quantize: one of `QUANTIZATIONS`.
        batch: the static batch of the input.
        representative: float32 model inputs for int8 calibration.

    Returns:
        The .tflite bytes.
    """
    _, crop = preprocess.geometry(variant)

    @tf.function(input_signature=[tf.TensorSpec([batch, crop, crop, 3], tf.float32, name="images")])
    def infer(images):
        return {"probabilities": tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))}

    holder = tf.Module()
    # The tf.Variables behind the Keras variables: the converter freezes what it can find.
    holder.model_variables = [v.value for v in model.variables]
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [infer.get_concrete_function()], holder)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "int8":
        samples = list(representative or [])
        converter.representative_dataset = lambda: ([s] for s in samples)
        has_float_lrn = any(isinstance(layer, LocalResponseNormalization)
                            and layer.implementation != "decomposed" for layer in model.layers)
        # Integer-only unless a float-only builtin LRN must stay (DEQUANTIZE -> LRN -> QUANTIZE).
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8] + (
            [tf.lite.OpsSet.TFLITE_BUILTINS] if has_float_lrn else [])
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    return converter.convert()


def export_tflite(model_dir: str, export_dir: str | None = None, *, checkpoint: str = "best",
                  quantize: str = "none", lrn: str = "builtin", batch: int = 1,
                  calibration_data: Iterable | None = None, calibration_steps: int = 100,
                  model_name: str | None = None) -> str:
    """Exports a training run's weights as a .tflite file with a labels file beside it.

    The file carries image-classifier metadata (`tflite_metadata.add_metadata`); when
    MediaPipe's ImageClassifier cannot run the form (a batch other than 1), one
    warning line says so.

    Args:
        model_dir: the training run's folder.
        export_dir: destination folder; defaults to MODEL_DIR/export.
        checkpoint: "best" or "latest" weights.
        quantize: "none" (float32), "float16" (float16 weights), "dynamic"
            (int8 weights, float activations) or "int8" (full integer,
            uint8 input and output, calibrated).
        lrn: "builtin" (TFLite's LOCAL_RESPONSE_NORMALIZATION op, float32
            only) or "decomposed" (MUL, CONV_2D, LOG, EXP: quantizes to int8;
            one XNNPACK partition in float). The weights are the same.
        batch: the static batch of the model's input.
        calibration_data: for int8, an iterable of uint8 stored-size image
            batches (see `calibration_samples`); defaults to the run's own
            training data (`calibration_batches`).
        calibration_steps: number of calibration images.
        model_name: the artifact's name prefix; defaults to `alexnet_<variant>`.

    Returns:
        The .tflite path.

    Raises:
        ValueError: on an unknown quantization or LRN form, a bad batch or step count.
        FileNotFoundError: when the run or its weights are missing.
        FileExistsError: when the artifact already exists.
        NotADirectoryError: when the destination is a file.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"`quantize` must be one of {QUANTIZATIONS}. Received: quantize={quantize!r}")
    if lrn not in TFLITE_LRN_FORMS:
        raise ValueError(f"`lrn` must be one of {TFLITE_LRN_FORMS}. Received: lrn={lrn!r}")
    for key, value in (("batch", batch), ("calibration_steps", calibration_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{key}` must be a positive integer. Received: {key}={value!r}")
    info = rundir.read_run_info(model_dir)
    name = common.model_name_for(info, model_name)
    class_names = common.class_names_of(info)
    variant = info["variant"]
    folder = common.resolve_export_dir(model_dir, export_dir)
    path = os.path.join(folder, artifact_name(name, variant, quantize=quantize, lrn=lrn, batch=batch))
    if os.path.lexists(path):
        raise FileExistsError(f"{path!r} already exists; delete it or choose another --export_dir.")
    model, info = rundir.load_trained_model(model_dir, checkpoint, lrn_implementation=lrn)

    representative = None
    if quantize == "int8":
        if calibration_data is None:
            calibration_data = calibration_batches(model_dir, max_images=calibration_steps)
        representative = calibration_samples(calibration_data, variant, batch=batch,
                                             steps=calibration_steps)
    flatbuffer = convert(model, variant, quantize=quantize, batch=batch,
                         representative=representative)
    ops = op_list(flatbuffer)
    unwanted = sorted({op.name for op in ops if op.name.startswith(UNWANTED_OPS)})
    if unwanted:
        raise ValueError(f"The converted model has ops {unwanted}; refusing to write {path!r}.")
    if quantize == "int8" and float_ops(ops):
        _log.warning("%s is not integer-only: %s run in float32 (TFLite's LRN kernel is "
                     "float-only). Use lrn='decomposed' for an integer-only model.",
                     os.path.basename(path), sorted({op.name for op in float_ops(ops)}))
    flatbuffer = _with_metadata(flatbuffer, path, model_dir, info, name, class_names,
                                checkpoint=checkpoint, quantize=quantize, lrn=lrn)
    rundir.atomic_write_text(labels_path_for(path), common.labels_text(class_names))
    common.publish_file(flatbuffer, path)
    return path


def _with_metadata(flatbuffer, path, model_dir, info, name, class_names, *, checkpoint, quantize,
                   lrn):
    """The flatbuffer with image-classifier metadata; a warning when MediaPipe cannot run it."""
    from export import tflite_metadata

    _, crop = preprocess.geometry(info["variant"])
    weights = os.path.join(model_dir, rundir.WEIGHTS[checkpoint])
    flatbuffer = tflite_metadata.add_metadata(
        flatbuffer, model_name=name, class_names=class_names,
        model_description=tflite_metadata.description(info, quantize=quantize, lrn=lrn, crop=crop),
        version=tflite_metadata.weights_version(weights, checkpoint))
    refusal = tflite_metadata.mediapipe_refusal(flatbuffer)
    if refusal:
        _log.warning("%s: %s", os.path.basename(path), refusal)
    return flatbuffer


class Op(NamedTuple):
    """One operator of a TFLite model: its name and its input and output tensor types."""
    name: str
    inputs: tuple
    outputs: tuple

    def __str__(self):
        return f"{self.name}({', '.join(self.inputs)}) -> {', '.join(self.outputs)}"


def op_list(model) -> list[Op]:
    """The operators of a .tflite model's main graph, in order.

    Args:
        model: a .tflite path or its bytes.
    """
    from ai_edge_litert import schema_py_generated as schema

    if isinstance(model, str):
        with open(model, "rb") as f:
            model = f.read()
    parsed = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    graph = parsed.subgraphs[0]
    ops = []
    for op in graph.operators:
        code = parsed.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
        name = op_names.get(builtin, str(builtin))
        if name == "CUSTOM":
            custom = code.customCode.decode() if code.customCode else "?"
            name = f"FLEX:{custom}" if custom.startswith("Flex") else f"CUSTOM:{custom}"
        ops.append(Op(name, tuple(type_names[graph.tensors[i].type] for i in op.inputs if i >= 0),
                      tuple(type_names[graph.tensors[i].type] for i in op.outputs)))
    return ops


def float_ops(ops: list[Op]) -> list[Op]:
    """The ops that compute in floating point (any float input or output, DEQUANTIZE included)."""
    return [op for op in ops if any(t.startswith("FLOAT") for t in op.inputs + op.outputs)]


def xnnpack_partitions(model, num_threads: int = 1) -> tuple[int, list[str]]:
    """How XNNPACK (LiteRT's default CPU delegate) splits a model.

    Args:
        model: a .tflite path or its bytes.
        num_threads: interpreter threads.

    Returns:
        (partitions, cpu_ops): the number of delegated partitions and the
        names of the ops left to LiteRT's own kernels, in graph order.
    """
    from ai_edge_litert.interpreter import Interpreter

    kwargs = {"model_path": model} if isinstance(model, str) else {"model_content": bytes(model)}
    interpreter = Interpreter(num_threads=num_threads, **kwargs)
    interpreter.allocate_tensors()
    # The original nodes, then one DELEGATE node per partition.
    nodes = {n["index"]: n for n in interpreter._get_ops_details()}
    delegates = [n for n in nodes.values() if n["op_name"] == "DELEGATE"]
    originals = [n for n in nodes.values() if n["op_name"] != "DELEGATE"]
    producer = {int(t): n["index"] for n in originals for t in n["outputs"]}
    delegated = set()
    for d in delegates:
        boundary = {int(t) for t in d["inputs"]}
        stack = [int(t) for t in d["outputs"]]
        while stack:  # walk back from the partition's outputs to its inputs
            t = stack.pop()
            if t in boundary or t not in producer or producer[t] in delegated:
                continue
            delegated.add(producer[t])
            node = nodes[producer[t]]
            stack.extend(int(i) for i in node["inputs"] if i >= 0)
    cpu_ops = [n["op_name"] for n in originals if n["index"] not in delegated]
    return len(delegates), cpu_ops


def size_report(paths: Iterable[str]) -> list[tuple[str, int]]:
    """(file name, bytes) of artifacts; a SavedModel folder counts all its files."""
    out = []
    for path in paths:
        if os.path.isdir(path):
            size = sum(os.path.getsize(os.path.join(root, f))
                       for root, _, files in os.walk(path) for f in files)
        else:
            size = os.path.getsize(path)
        out.append((path, size))
    return out

