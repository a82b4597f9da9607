"""Errors that name the thing at fault (a file, a config key, a pin) and say what to do."""

from __future__ import annotations


class EcoSorterError(Exception):
    """Base for every error we expect a person to read; the CLI prints it without a traceback."""


class ConfigError(EcoSorterError):
    def __init__(self, key: str, message: str):
        super().__init__(f"config {key}: {message}")
        self.key = key


class ConfigErrors(ConfigError):
    """Every problem in a config at once, so one edit fixes them all."""

    def __init__(self, errors: list[ConfigError]):
        self.errors = list(errors)
        if len(self.errors) == 1:
            Exception.__init__(self, str(self.errors[0]))
        else:
            Exception.__init__(self, f"config: {len(self.errors)} problems:\n" + "\n".join(f"  - {e}" for e in self.errors))
        self.key = self.errors[0].key if self.errors else ""


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
