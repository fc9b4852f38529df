"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) in Keras 3 on TensorFlow.

The names below import TensorFlow when first used, so that `alexnet_tf.cpu_info` can set
TensorFlow's start-up options (oneDNN) before TensorFlow is loaded.
"""

import importlib

_EXPORTS = {"LocalResponseNormalization": "alexnet_tf.layers", "VARIANTS": "alexnet_tf.model",
            "build_alexnet": "alexnet_tf.model", "forward_flops": "alexnet_tf.model"}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alexnet_tf' has no attribute {name!r}")
