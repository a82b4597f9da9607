"""Calibration and validation images: listing, stratified sampling, the training transform."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecosorter.edge.errors import EcoSorterError, ImageError
from ecosorter.edge.preprocess import InputSpec, Preprocessor, PreprocessSpec, decode_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


class ImageSetError(EcoSorterError):
    pass


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int | None  # index into the model's labels; None for a flat folder


def list_images(folder: str | Path, label_ids: Sequence[str]) -> list[LabelledImage]:
    """Class subfolders named after labels, or a flat folder of images (labels unknown)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageSetError(f"image folder {folder}: not found or not a folder")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    out: list[LabelledImage] = []
    if subdirs:
        unknown = [d.name for d in subdirs if d.name not in label_ids]
        if unknown:
            raise ImageSetError(f"image folder {folder}: subfolders {', '.join(unknown)} are not labels "
                                f"of this model ({', '.join(label_ids)})")
        for d in subdirs:
            out += [LabelledImage(p, label_ids.index(d.name)) for p in _files(d)]
    out += [LabelledImage(p, None) for p in _files(folder)]
    if not out:
        raise ImageSetError(f"image folder {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return out


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def stratified_sample(images: list[LabelledImage], n: int, seed: int) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(sample of about n, the rest), the same fraction from every class, reproducible by seed."""
    rng = np.random.default_rng(seed)
    if n >= len(images):
        return list(images), []
    groups: dict[int | None, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.label, []).append(i)
    frac = n / len(images)
    picked: list[int] = []
    for idx in groups.values():
        perm = rng.permutation(idx)
        picked += perm[:max(1, round(len(idx) * frac))].tolist()
    picked = sorted(picked[:n]) if len(picked) > n else sorted(picked)
    chosen = set(picked)
    return [images[i] for i in picked], [im for i, im in enumerate(images) if i not in chosen]


class TrainingTransform:
    """Decode + the training transform, as float32 (what the Keras model saw)."""

    def __init__(self, prep: PreprocessSpec, height: int, width: int):
        self._prep = Preprocessor(prep, InputSpec(height=height, width=width))

    def __call__(self, path: Path) -> np.ndarray:
        return self._prep(decode_image(path), "rgb")[0]


def load_tensors(images: list[LabelledImage], transform: TrainingTransform, desc: str,
                 progress: bool = True) -> tuple[np.ndarray, list[LabelledImage], list[str]]:
    """Float tensors for every readable image; unreadable ones are skipped and reported."""
    tensors, kept, skipped = [], [], []
    for im in progress_bar(images, desc, progress):
        try:
            tensors.append(transform(im.path))
            kept.append(im)
        except ImageError as e:
            skipped.append(str(e))
    arr = np.stack(tensors) if tensors else np.zeros((0,), np.float32)
    return arr, kept, skipped


def progress_bar(items: list, desc: str, enabled: bool) -> Iterator:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return iter(items)
    return iter(tqdm(items, desc=desc, unit="img", disable=not enabled, leave=False))
