"""EcoSorter Edge: camera -> preprocess -> classify -> decide -> act -> record, on a Pi.

Nothing here imports TensorFlow. The Python API mirrors the CLI:

    from ecosorter.edge import load_model, classify_image
    model = load_model()                      # the bundled demo model
    result = classify_image(model, "bottle.jpg")
"""

from ecosorter.edge.api import classify_image, load_model

__all__ = ["classify_image", "load_model"]
