"""Stage 3 inputs: the converter's .tflite, its embedded manifest, and loading it in a runtime."""

from ecosorter.edge.model.loader import LoadedModel, load_model
from ecosorter.edge.model.manifest import DEFAULT_LABELS, MANIFEST_NAME, Label, Manifest

__all__ = ["DEFAULT_LABELS", "MANIFEST_NAME", "Label", "LoadedModel", "Manifest", "load_model"]
