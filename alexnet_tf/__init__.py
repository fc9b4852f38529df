"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) in Keras 3 on TensorFlow."""

from alexnet_tf.layers import LocalResponseNormalization
from alexnet_tf.model import VARIANTS, build_alexnet, forward_flops

__all__ = ["LocalResponseNormalization", "VARIANTS", "build_alexnet", "forward_flops"]
