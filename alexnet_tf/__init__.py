"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) in Keras 3 on TensorFlow.

The names below import TensorFlow when first used, so that `alexnet_tf.cpu_info` can set
TensorFlow's start-up options (oneDNN) before TensorFlow is loaded. The LRN layer is
registered with Keras as soon as Keras is imported (now, or later by anyone), so that
`keras.saving.load_model` reads this project's `.keras` files after `import alexnet_tf`.
"""

import importlib
import importlib.abc
import sys

_EXPORTS = {"LocalResponseNormalization": "alexnet_tf.layers", "VARIANTS": "alexnet_tf.model",
            "build_alexnet": "alexnet_tf.model", "forward_flops": "alexnet_tf.model",
            "AlexNet": "alexnet_tf.applications", "preprocess_input": "alexnet_tf.applications",
            "decode_predictions": "alexnet_tf.applications"}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alexnet_tf' has no attribute {name!r}")


class _RegisterWithKeras(importlib.abc.MetaPathFinder):
    """Imports `alexnet_tf.layers` (which registers the LRN layer) right after `keras` loads.

    Keras finds custom layers of a `.keras` file by their registered name only, so the
    registration must exist before `load_model` runs; importing it here would load
    TensorFlow with `import alexnet_tf`.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _unhook()
            importlib.import_module("alexnet_tf.layers")

        spec.loader.exec_module = exec_then_register  # this spec's own loader instance
        return spec


def _unhook():
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterWithKeras)]


if "keras" in sys.modules:
    importlib.import_module("alexnet_tf.layers")
else:
    sys.meta_path.insert(0, _RegisterWithKeras())
