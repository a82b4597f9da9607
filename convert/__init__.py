"""Workstation side: the user's Keras model -> a verified, self-describing TFLite model.

Needs TensorFlow (`pip install 'ecosorter[convert]'`); the edge never imports this package.
"""

from ecosorter.convert.pipeline import ConversionResult, convert

__all__ = ["ConversionResult", "convert"]
