"""Stage 2: frame pixels -> the model's input tensor, exactly as in training."""

from ecosorter.edge.preprocess.decode import decode_image
from ecosorter.edge.preprocess.spec import InputSpec, PreprocessSpec
from ecosorter.edge.preprocess.transform import Preprocessor, nearest_indices

__all__ = ["InputSpec", "PreprocessSpec", "Preprocessor", "decode_image", "nearest_indices"]
