"""TFLite Model Metadata of exported classifiers: what MediaPipe Tasks' ImageClassifier reads.

Written with MediaPipe's metadata writer; only the TFLite export imports this module,
and MediaPipe is imported inside its functions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from typing import NamedTuple

from alexnet_tf.storage import file_sha256

AUTHOR = "AlexNet in Keras 3 / TensorFlow (alexnet_tf)"
LABELS_FILE = "labels.txt"     # the label file's name inside the .tflite
MEDIAPIPE_BATCH = 1            # ImageClassifier feeds one image per inference
_PRECISIONS = {"none": "float32", "float16": "float16 weights",
               "dynamic": "int8 weights with float activations",
               "int8": "full-integer int8 with uint8 input and output"}
_VERSION_MODULE = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"


class _Tensor(NamedTuple):
    shape: list
    uint8: bool
    float32: bool
    scale: float        # quantization; 0.0 when not quantized
    zero_point: int


def _io_tensors(flatbuffer: bytes) -> tuple[list[_Tensor], list[_Tensor]]:
    """The input and output tensors of a .tflite model's main graph (weights are not read)."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(bytearray(flatbuffer), 0).Subgraphs(0)

    def tensor(index):
        t = graph.Tensors(index)
        q = t.Quantization()
        quantized = q is not None and q.ScaleLength() > 0
        return _Tensor(shape=[int(d) for d in t.ShapeAsNumpy()],
                       uint8=t.Type() == schema.TensorType.UINT8,
                       float32=t.Type() == schema.TensorType.FLOAT32,
                       scale=float(q.Scale(0)) if quantized else 0.0,
                       zero_point=int(q.ZeroPoint(0)) if quantized else 0)

    return ([tensor(graph.Inputs(i)) for i in range(graph.InputsLength())],
            [tensor(graph.Outputs(i)) for i in range(graph.OutputsLength())])


def weights_version(weights_path: str, checkpoint: str) -> str:
    """The metadata `version` of an export: which weights file it holds, by content."""
    return f"{checkpoint} weights sha256:{file_sha256(weights_path)[:16]}"


def description(info: dict, *, quantize: str, lrn: str, crop: int) -> str:
    """The model's description: what was trained or converted, and how it was exported."""
    from alexnet_tf.model import VARIANTS

    if info.get("converted_from"):
        source = f"converted from a {info['converted_from']['format']}"
    elif info.get("dataset") == "folder" and info.get("data_dir"):
        folder = os.path.basename(os.path.normpath(info["data_dir"]))
        source = f"trained on the image folder {folder}"
    else:
        source = f"trained on {info.get('dataset') or 'generated data'}"
    lrn_text = ""
    if VARIANTS[info["variant"]].use_lrn:
        lrn_text = ("; LRN as TFLite LOCAL_RESPONSE_NORMALIZATION ops" if lrn == "builtin"
                    else "; LRN decomposed into MUL, CONV_2D, LOG and EXP")
    return (f"AlexNet ({info['variant']} variant, {info['num_classes']} classes), {source}. "
            f"Exported as {_PRECISIONS[quantize]}{lrn_text}. "
            f"Input: one {crop}x{crop} RGB image, pixels 0-255 (normalised inside the model). "
            "Output: class probabilities (the graph ends in softmax).")


def add_metadata(flatbuffer: bytes, *, model_name: str, model_description: str, version: str,
                 class_names: list[str]) -> bytes:
    """Returns `flatbuffer` with image-classifier metadata and the class names packed in.

    The input is described as an RGB image. A float32 input gets normalisation
    mean 0, std 1, so the runtime hands the model raw pixels in [0, 255] (the
    model normalises per channel itself); a uint8 input gets none: the pixels
    are the tensor. The output is described as class probabilities with the
    class names as its associated label file (TENSOR_AXIS_LABELS).

    Args:
        flatbuffer: a .tflite model with one image input and one probability output.
        model_name: the metadata's model name.
        model_description: the metadata's description.
        version: the metadata's version string.
        class_names: names of the output's classes, in index order.

    Returns:
        The .tflite bytes with metadata.

    Raises:
        ValueError: when the model does not have exactly one input and one output,
            the input is not float32 or uint8, or the class count differs from the
            output's.
    """
    _install_parser_version()
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_writer

    inputs, outputs = _io_tensors(flatbuffer)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError("An image classifier has one input and one output tensor. "
                         f"Received: {len(inputs)} inputs, {len(outputs)} outputs.")
    (image,), (scores,) = inputs, outputs
    if len(image.shape) != 4 or image.shape[-1] != 3 or not (image.uint8 or image.float32):
        raise ValueError("The input must be float32 or uint8 RGB pixels [batch, height, width, 3]. "
                         f"Received: shape={image.shape}")
    if scores.shape[-1] != len(class_names):
        raise ValueError(f"{len(class_names)} class names for an output of {scores.shape[-1]} "
                         "classes.")
    uint8 = image.uint8
    height, width = image.shape[1:3]

    writer = _writer_class()(bytearray(flatbuffer))
    writer.add_general_info(model_name, model_description, version=version, author=AUTHOR)
    writer.add_image_input(
        norm_mean=[] if uint8 else [0.0], norm_std=[] if uint8 else [1.0],
        color_space_type=metadata_writer.MetadataWriter.color_space_types.RGB,
        name="image",
        description=(f"One {height}x{width} RGB image, "
                     + ("uint8 pixels 0-255 as they are" if uint8 else
                        "float32 pixels 0-255 (mean 0, std 1: the raw pixels)")
                     + "; the model normalises per channel inside."))
    writer.add_classification_output(
        metadata_writer.Labels().add(list(class_names), exported_filename=LABELS_FILE),
        name="probabilities",
        description=(f"Probabilities of the {len(class_names)} classes, "
                     + (f"uint8 times {scores.scale:g}" if scores.uint8 else "float32")
                     + "; the graph ends in softmax."))
    model, _ = writer.populate()
    return bytes(model)


def mediapipe_refusal(flatbuffer: bytes) -> str | None:
    """Why MediaPipe's ImageClassifier cannot run a .tflite model as exported; None if it can.

    It takes only [1, H, W, 3] inputs, and it copies uint8 pixels into a uint8 input
    as they are, which is right only when that input is quantized with scale 1 and
    zero point 0 (so that the stored value is the pixel).
    """
    image = _io_tensors(flatbuffer)[0][0]
    if len(image.shape) != 4 or image.shape[0] != MEDIAPIPE_BATCH:
        return (f"MediaPipe's ImageClassifier refuses it: it takes a batch of {MEDIAPIPE_BATCH} "
                f"and this input is {image.shape} (export with a batch of 1 for it).")
    if image.uint8 and (abs(image.scale - 1.0) > 1e-6 or image.zero_point != 0):
        return ("MediaPipe's ImageClassifier would give wrong scores: it feeds raw uint8 "
                f"pixels, but this input is quantized with scale {image.scale:g}, zero point "
                f"{image.zero_point} (calibrate on images whose pixels span 0-255).")
    return None


def read_metadata(model) -> dict:
    """The metadata of a .tflite model (a path or its bytes) as a dict; {} when it has none."""
    _install_parser_version()
    from mediapipe.tasks.python.metadata import metadata

    displayer = _displayer(model, metadata)
    return json.loads(displayer.get_metadata_json()) if displayer else {}


def packed_labels(model) -> list[str]:
    """The class names packed in a .tflite model's metadata (a path or its bytes)."""
    _install_parser_version()
    from mediapipe.tasks.python.metadata import metadata

    displayer = _displayer(model, metadata)
    if displayer is None:
        return []
    return displayer.get_associated_file_buffer(LABELS_FILE).decode("utf-8").splitlines()


def _displayer(model, metadata):
    if isinstance(model, str):
        with open(model, "rb") as f:
            model = f.read()
    try:
        return metadata.MetadataDisplayer.with_model_buffer(bytearray(model))
    except ValueError:  # "The model does not have metadata."
        return None


def _writer_class():
    from mediapipe.tasks.python.metadata.metadata_writers import metadata_info, metadata_writer

    class Writer(metadata_writer.MetadataWriter):
        """MediaPipe's generic writer, whose general info also takes a version and an author."""

        def add_general_info(self, model_name, model_description=None, *, version=None,
                             author=None):
            self._general_md = metadata_info.GeneralMd(
                name=model_name, description=model_description, version=version, author=author)
            return self

    return Writer


# --- MediaPipe's metadata writer needs a parser-version helper its wheels no longer ship. ---

# The schema's version history (metadata_schema.fbs, "History"): the version that added each
# feature. A metadata buffer needs a parser at least as new as every feature it uses.
_FEATURE_VERSIONS = {
    ("file_type", 5): "1.0.1",                   # AssociatedFileType.VOCABULARY
    ("options", 4): "1.1.0",                     # BertTokenizerOptions
    ("options", 5): "1.1.0",                     # SentencePieceTokenizerOptions
    ("subgraph", "inputProcessUnits"): "1.1.0",
    ("subgraph", "outputProcessUnits"): "1.1.0",
    ("subgraph", "inputTensorGroups"): "1.2.0",
    ("subgraph", "outputTensorGroups"): "1.2.0",
    ("options", 6): "1.2.1",                     # RegexTokenizerOptions
    ("content", 4): "1.3.0",                     # ContentProperties.AudioProperties
    ("file_type", 6): "1.4.0",                   # AssociatedFileType.SCANN_INDEX_FILE
    ("file", "version"): "1.4.1",
    ("subgraph", "customMetadata"): "1.5.0",
}


def minimum_parser_version(metadata_buffer: bytes) -> str:
    """The oldest metadata parser that understands every field set in a metadata flatbuffer.

    The rule of `ModelMetadata.min_parser_version`: the newest schema version among the
    features used, and at least 1.0.0.
    """
    from mediapipe.tasks.metadata import metadata_schema_py_generated as fb

    root = fb.ModelMetadataT.InitFromPackedBuf(bytearray(metadata_buffer), 0)
    used = set()

    def visit(node):
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not hasattr(node, "__dict__"):
            return
        if isinstance(node, fb.SubGraphMetadataT):
            used.update(("subgraph", k) for k, v in vars(node).items() if v)
        elif isinstance(node, fb.AssociatedFileT):
            used.add(("file_type", node.type))
            if node.version:
                used.add(("file", "version"))
        elif isinstance(node, fb.ProcessUnitT):
            used.add(("options", node.optionsType))
        elif isinstance(node, fb.ContentT):
            used.add(("content", node.contentPropertiesType))
        for value in vars(node).values():
            visit(value)

    visit(root)
    versions = [_FEATURE_VERSIONS[k] for k in used if k in _FEATURE_VERSIONS] + ["1.0.0"]
    return max(versions, key=lambda v: tuple(int(p) for p in v.split(".")))


def _install_parser_version() -> None:
    """Provides the module MediaPipe's metadata populator imports for the parser version.

    MediaPipe's wheels moved to C bindings and no longer ship the compiled helper that
    `mediapipe.tasks.python.metadata.metadata` imports; without it the metadata writers
    cannot be imported at all. When it is missing, `minimum_parser_version` stands in.
    """
    if _VERSION_MODULE in sys.modules:
        return
    parts = _VERSION_MODULE.split(".")
    if all(importlib.util.find_spec(".".join(parts[:i])) for i in range(3, len(parts) + 1)):
        return
    for i in range(3, len(parts)):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = []
            sys.modules[name] = module
    helper = types.ModuleType(_VERSION_MODULE)
    helper.GetMinimumMetadataParserVersion = minimum_parser_version
    sys.modules[_VERSION_MODULE] = helper
    setattr(sys.modules[".".join(parts[:-1])], parts[-1], helper)
