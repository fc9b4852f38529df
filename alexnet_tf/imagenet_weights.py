"""torchvision's published ImageNet AlexNet weights: where they are downloaded from, Keras'
cache, and the hash check that runs before a byte of the file is unpickled.

`AlexNet(weights="imagenet")` and `python main.py convert --weights=imagenet` use `fetch`.
"""

from __future__ import annotations

import os

from alexnet_tf import storage

FILE_NAME = "alexnet-owt-7be5be79.pth"
# torch.hub's naming: the file name carries the first hex digits of the file's SHA-256.
SHA256_PREFIX = "7be5be79"
BASE_URL = "https://download.pytorch.org/models/"
# A base URL that replaces BASE_URL (an internal mirror, a file:// folder); the hash check stays.
MIRROR_ENV = "ALEXNET_TF_WEIGHTS_MIRROR"
CACHE_SUBDIR = "models"


def url() -> str:
    """Where the file is downloaded from: BASE_URL, or the base URL in $ALEXNET_TF_WEIGHTS_MIRROR."""
    base = os.environ.get(MIRROR_ENV) or BASE_URL
    return base.rstrip("/") + "/" + FILE_NAME


def fetch() -> str:
    """The path of torchvision's AlexNet weights in Keras' cache, downloaded if absent.

    The cache is $KERAS_HOME/models, or ~/.keras/models without KERAS_HOME (read at each
    call). A file already there is used without a request. Either way its SHA-256 must
    start with `SHA256_PREFIX` (the digits in its name); a file that does not is removed.

    Returns:
        The local path of `FILE_NAME`.

    Raises:
        ConnectionError: the download failed (offline, refused, HTTP error); one line
            naming the URL and how to pass a local copy instead.
        ValueError: the file's hash does not match; it is removed from the cache.
    """
    import keras  # noqa: PLC0415 - TensorFlow loads only when weights are fetched

    origin = url()
    cache_dir = os.environ.get("KERAS_HOME") or None
    if cache_dir:  # get_file falls back to /tmp/.keras for a folder it cannot write to (or absent)
        os.makedirs(cache_dir, exist_ok=True)
    try:
        path = keras.utils.get_file(FILE_NAME, origin, cache_subdir=CACHE_SUBDIR,
                                    cache_dir=cache_dir)
    except Exception as e:  # noqa: BLE001 - get_file raises a bare Exception for URL errors
        reason = " ".join(str(e).split(" -- ")[-1].split()) or type(e).__name__
        raise ConnectionError(
            f"Could not download the ImageNet weights from {origin} ({reason}). Download "
            f"{FILE_NAME} where you can and pass the file: AlexNet(weights=\"/path/{FILE_NAME}\") "
            f"or python main.py convert --weights=/path/{FILE_NAME}; or set {MIRROR_ENV} to a "
            "base URL that serves it.") from None
    digest = storage.file_sha256(path)
    if not digest.startswith(SHA256_PREFIX):
        os.remove(path)
        raise ValueError(
            f"Refusing {origin}: its SHA-256 starts with {digest[:len(SHA256_PREFIX)]}, not "
            f"{SHA256_PREFIX} as {FILE_NAME} says (an incomplete or altered download). It was "
            "removed from the cache; the next try downloads it again.")
    return path
