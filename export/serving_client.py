"""A gRPC client of the exported model under TF Serving: builds PredictRequests, parses PredictResponses.

The two halves are separate functions so the request/response contract can
be checked without a server (see tests/test_export_saved_model.py). Usage:

    python -m export.serving_client --server=localhost:8500 --model_name=alexnet_cifar cat.jpg
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

SIGNATURE_PIXELS = "serving_default"
SIGNATURE_BYTES = "serving_bytes"
OUTPUTS = ("probabilities", "classes", "class_names", "top_k_indices", "top_k_probabilities",
           "top_k_class_names")


def make_predict_request(model_name: str, *, images=None, image_bytes: Sequence[bytes] | None = None,
                         signature_name: str | None = None, version: int | None = None
                         ) -> predict_pb2.PredictRequest:
    """Builds a PredictRequest for one of the exported signatures.

    Args:
        model_name: the name the server serves the model under (e.g. "alexnet_cifar").
        images: uint8 pixels [batch, height, width, 3] (or one [height, width, 3]
            image) for `serving_default`.
        image_bytes: encoded JPEG/PNG files for `serving_bytes`.
        signature_name: defaults to the signature that matches the input given.
        version: a specific model version; the server's latest when None.

    Returns:
        The request, inputs named as in the signature.

    Raises:
        ValueError: unless exactly one of `images` / `image_bytes` is given, or
            when it has the wrong dtype or rank.
    """
    if (images is None) == (image_bytes is None):
        raise ValueError("Pass exactly one of `images` (uint8 pixels) or `image_bytes` (encoded files).")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    if version is not None:
        request.model_spec.version.value = int(version)
    if images is not None:
        array = np.asarray(images)
        if array.dtype != np.uint8:
            raise ValueError(f"`images` must be uint8 pixels. Received: dtype={array.dtype}")
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError("`images` must be [batch, height, width, 3]. "
                             f"Received: shape={array.shape}")
        request.model_spec.signature_name = signature_name or SIGNATURE_PIXELS
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(array, dtype=tf.uint8))
    else:
        if isinstance(image_bytes, (bytes, str)):
            raise ValueError("`image_bytes` must be a list of encoded files, not one string.")
        items = list(image_bytes)
        if not items or not all(isinstance(b, bytes) for b in items):
            raise ValueError("`image_bytes` must be a non-empty list of bytes objects.")
        request.model_spec.signature_name = signature_name or SIGNATURE_BYTES
        request.inputs["image_bytes"].CopyFrom(
            tf.make_tensor_proto(items, dtype=tf.string, shape=[len(items)]))
    return request


def parse_predict_response(response) -> dict[str, np.ndarray]:
    """Turns a PredictResponse into NumPy arrays keyed by output name.

    String outputs (`class_names`, `top_k_class_names`) come back as str arrays.

    Raises:
        ValueError: when the response lacks `probabilities`.
    """
    outputs = {}
    for name, proto in response.outputs.items():
        value = tf.make_ndarray(proto)
        if value.dtype == object:
            value = np.vectorize(lambda b: b.decode("utf-8"), otypes=[str])(value) if value.size \
                else value.astype(str)
        outputs[name] = value
    if "probabilities" not in outputs:
        raise ValueError(f"The response has no `probabilities` output; got {sorted(outputs)}.")
    return outputs


def predict(server: str, model_name: str, *, images=None, image_bytes=None,
            signature_name: str | None = None, timeout_s: float = 10.0) -> dict[str, np.ndarray]:
    """Sends one Predict call to a TF Serving gRPC endpoint and parses the reply.

    Args:
        server: "host:port" of the model server's gRPC port (8500 by default).
        model_name, images, image_bytes, signature_name: see `make_predict_request`.
        timeout_s: deadline of the call.

    Returns:
        The outputs, see `parse_predict_response`.
    """
    import grpc  # imported here: building and parsing requests needs no gRPC
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = make_predict_request(model_name, images=images, image_bytes=image_bytes,
                                   signature_name=signature_name)
    with grpc.insecure_channel(server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return parse_predict_response(stub.Predict(request, timeout_s))


def main(argv: Sequence[str] | None = None) -> int:
    """Classifies image files through a running model server; prints the top-k per file."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="localhost:8500", help="gRPC host:port")
    parser.add_argument("--model_name", default="alexnet_cifar")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    payload = []
    for path in args.files:
        with open(path, "rb") as f:
            payload.append(f.read())
    outputs = predict(args.server, args.model_name, image_bytes=payload)
    for i, path in enumerate(args.files):
        print(path)
        for name, p in zip(outputs["top_k_class_names"][i], outputs["top_k_probabilities"][i]):
            print(f"  {p:.4f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
