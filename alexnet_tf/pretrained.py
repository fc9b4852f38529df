"""ImageNet-pretrained AlexNet from torchvision's published weights.

`convert_torchvision` turns a torchvision AlexNet state dict (`alexnet-owt-7be5be79.pth`)
into a run folder of the `owt` variant that evaluate, export, predict and
`train --init_from` take like any trained run. Reading the file needs no PyTorch.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

import numpy as np
from absl import logging

from alexnet_tf import rundir, storage
from alexnet_tf.model import build_alexnet
from alexnet_tf.torch_checkpoint import read_state_dict

# torchvision.models.alexnet: state-dict prefix -> this project's layer.
TORCHVISION_LAYERS = {
    "features.0": "conv1", "features.3": "conv2", "features.6": "conv3",
    "features.8": "conv4", "features.10": "conv5",
    "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8",
}
# torchvision's ImageNet input normalisation, on pixels in [0, 1].
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
_CLASSES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "imagenet_classes.tsv")
# torch.hub's naming: the file name carries the first hex digits of the file's SHA-256.
_HUB_NAME = re.compile(r"-([0-9a-f]{8,})\.pth?$")
# What torch.nn.DataParallel and DistributedDataParallel put before every key of a saved state dict.
DATA_PARALLEL_PREFIX = "module."


def imagenet_classes() -> tuple[list[str], list[str]]:
    """ImageNet-1k's classes in torchvision's order (index = class of the published weights).

    Returns:
        (wnids, names): WordNet ids ("n01440764", ...) and torchvision's names ("tench", ...).
    """
    wnids, names = [], []
    with open(_CLASSES_FILE, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            wnid, name = line.rstrip("\n").split("\t")
            wnids.append(wnid)
            names.append(name)
    return wnids, names


def read_torchvision_state_dict(path: str) -> dict[str, np.ndarray]:
    """Reads a torchvision AlexNet state dict (see `read_state_dict`), without PyTorch.

    A state dict saved from `DataParallel` / `DistributedDataParallel` has every key
    prefixed `module.`; the prefix is dropped (and a line logged saying so).

    Args:
        path: the .pth/.pt file.

    Returns:
        name -> array.

    Raises:
        FileNotFoundError, IsADirectoryError, ValueError: as `read_state_dict`.
    """
    state_dict = read_state_dict(path)
    if state_dict and all(key.startswith(DATA_PARALLEL_PREFIX) for key in state_dict):
        logging.info("%s was saved from DataParallel/DistributedDataParallel: reading its keys "
                     "without their %r prefix.", path, DATA_PARALLEL_PREFIX)
        state_dict = {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in state_dict.items()}
    return state_dict


def set_torchvision_weights(model, state_dict: dict) -> None:
    """Sets an `owt` model's weights from a torchvision AlexNet state dict (see `keras_weights`)."""
    for name, values in keras_weights(state_dict, model).items():
        model.get_layer(name).set_weights(values)


def keras_weights(state_dict: dict, model) -> dict[str, list[np.ndarray]]:
    """Maps a torchvision AlexNet state dict onto an `owt` model's layers.

    Convolution kernels go from torch's OIHW to Keras' HWIO, dense kernels are
    transposed, and fc6's inputs are reordered from torch's flatten of NCHW
    (c, h, w) to Keras' flatten of NHWC (h, w, c).

    Args:
        state_dict: name -> array, as `read_state_dict` gives.
        model: the `owt` Keras model the weights are for (its shapes are the contract).

    Returns:
        layer name -> [kernel, bias] in the model's layout, float32.

    Raises:
        ValueError: a key is missing or unexpected, or an array has another shape,
            naming the key.
    """
    expected = [f"{prefix}.{part}" for prefix in TORCHVISION_LAYERS for part in ("weight", "bias")]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        raise ValueError(f"The weights hold {unexpected[0]!r}, which torchvision's AlexNet does not "
                         f"have ({len(unexpected)} unexpected keys in all): not an AlexNet state dict.")
    if missing:
        raise ValueError(f"The weights lack {missing[0]!r} ({len(missing)} of torchvision's "
                         f"AlexNet keys missing): not a complete AlexNet state dict.")
    _, pool_h, pool_w, pool_c = model.get_layer("pool5").output.shape
    out = {}
    for prefix, name in TORCHVISION_LAYERS.items():
        kernel, bias = model.get_layer(name).get_weights()
        if kernel.ndim == 4:  # HWIO <- OIHW
            torch_shape = (kernel.shape[3], kernel.shape[2], kernel.shape[0], kernel.shape[1])
        else:  # [in, out] <- [out, in]
            torch_shape = (kernel.shape[1], kernel.shape[0])
        weight = _checked(state_dict, f"{prefix}.weight", torch_shape)
        bias_value = _checked(state_dict, f"{prefix}.bias", bias.shape)
        if kernel.ndim == 4:
            weight = weight.transpose(2, 3, 1, 0)
        elif name == "fc6":  # rows of torch's [out, c*h*w] -> Keras' [h*w*c, out]
            weight = weight.reshape(-1, pool_c, pool_h, pool_w).transpose(2, 3, 1, 0)
            weight = weight.reshape(pool_h * pool_w * pool_c, -1)
        else:
            weight = weight.T
        out[name] = [np.ascontiguousarray(weight, np.float32), np.asarray(bias_value, np.float32)]
    return out


def _checked(state_dict: dict, key: str, shape) -> np.ndarray:
    value = state_dict[key]
    if tuple(value.shape) != tuple(shape):
        raise ValueError(f"{key!r} has shape {list(value.shape)}; torchvision's AlexNet has "
                         f"{list(shape)} there: the weights are of another architecture.")
    if value.dtype.kind != "f" and str(value.dtype) != "bfloat16":
        raise ValueError(f"{key!r} holds {value.dtype} values; expected floating-point weights.")
    return value


def convert_torchvision(weights_path: str, model_dir: str) -> dict:
    """`python main.py convert`: writes a run folder from torchvision's AlexNet weights.

    The run is the `owt` variant with ImageNet's 1000 classes in torchvision's order
    (`run.json: class_names`, `class_ids` the WordNet ids) and torchvision's input
    normalisation in the model's `normalize` layer, so it takes raw pixels in [0, 255].
    `best.weights.h5` and `latest.weights.h5` hold the same weights. The folder is
    staged under a temporary name and renamed when complete.

    Args:
        weights_path: a torchvision AlexNet state dict, in either PyTorch file format.
        model_dir: the run folder to create (absent or empty).

    Returns:
        The run's `run.json` as a dict, plus `parameters` (the model's parameter count).

    Raises:
        FileNotFoundError: no file at `weights_path`.
        FileExistsError: `model_dir` is not empty.
        ValueError: the file is not a torchvision AlexNet state dict (see `keras_weights`
            and `read_state_dict`).
    """
    if os.path.isdir(model_dir) and os.listdir(model_dir):
        raise FileExistsError(f"--model_dir={model_dir!r} is not empty; convert writes a new run "
                              "folder. Choose another --model_dir or delete it first.")
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise NotADirectoryError(f"--model_dir={model_dir!r} is a file; give a folder for the run.")
    state_dict = read_torchvision_state_dict(weights_path)
    digest = storage.file_sha256(weights_path)
    _check_hub_name(weights_path, digest)
    wnids, names = imagenet_classes()
    model_kwargs = {"groups": 1, "init": None, "dropout": 0.5,
                    "mean": [255.0 * m for m in TORCHVISION_MEAN],
                    "std": [255.0 * s for s in TORCHVISION_STD]}
    model = build_alexnet("owt", len(names), **model_kwargs)
    set_torchvision_weights(model, state_dict)
    del state_dict
    info = {
        "variant": "owt",
        "num_classes": len(names),
        "class_names": names,
        "class_ids": wnids,
        "model_kwargs": model_kwargs,
        "weight_average": None,
        "dataset": None,
        "data_dir": None,
        "converted_from": {"format": "torchvision AlexNet state dict",
                           "file": os.path.abspath(weights_path), "sha256": digest},
        "config": {},
    }
    _write_run_atomically(model, info, model_dir)
    return dict(info, parameters=int(model.count_params()))


def _check_hub_name(path: str, digest: str) -> None:
    """Warns when a torch.hub-style file name's hash prefix disagrees with the contents."""
    match = _HUB_NAME.search(os.path.basename(path))
    if match and not digest.startswith(match.group(1)):
        logging.warning("%s: its SHA-256 starts with %s, but the file name says %s: the "
                        "download may be incomplete or altered.", path, digest[:8], match.group(1))


def _write_run_atomically(model, info: dict, model_dir: str) -> None:
    parent = os.path.dirname(os.path.abspath(model_dir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix=".tmp-convert-")
    try:
        best = os.path.join(staging, rundir.WEIGHTS["best"])
        model.save_weights(best)
        latest = os.path.join(staging, rundir.WEIGHTS["latest"])
        try:
            os.link(best, latest)  # the same weights; a rename replaces either later
        except OSError:
            shutil.copyfile(best, latest)
        rundir.write_run_info(staging, info)
        if os.path.isdir(model_dir):
            os.rmdir(model_dir)  # empty, checked above
        os.rename(staging, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
