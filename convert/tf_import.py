"""Import TensorFlow once, quietly, or say how to install it."""

from __future__ import annotations

import os

from ecosorter.edge.errors import EcoSorterError

INSTALL_HINT = ("TensorFlow is needed to convert models: pip install 'ecosorter[convert]' "
                "(on a workstation, not on the Pi)")


class MissingTensorFlow(EcoSorterError):
    pass


def import_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise MissingTensorFlow(f"{INSTALL_HINT} ({e})") from None
    tf.get_logger().setLevel("ERROR")
    return tf
