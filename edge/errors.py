"""Errors that name the thing at fault (a file, a config key, a pin) and say what to do."""

from __future__ import annotations


class EcoSorterError(Exception):
    """Base for every error we expect a person to read; the CLI prints it without a traceback."""


class ConfigError(EcoSorterError):
    def __init__(self, key: str, message: str):
        super().__init__(f"config {key}: {message}")
        self.key = key


class ModelError(EcoSorterError):
    def __init__(self, path: object, message: str):
        super().__init__(f"model {path}: {message}")
        self.path = path


class ImageError(EcoSorterError):
    def __init__(self, source: object, message: str):
        super().__init__(f"image {source}: {message}")
        self.source = source


class BackendError(EcoSorterError):
    pass


class SourceError(EcoSorterError):
    pass


class HardwareError(EcoSorterError):
    pass
