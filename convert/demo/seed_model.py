"""The seed notebook's architecture, for tests and studies where its trained weights are absent.

`ResNet50(include_top=False, input_shape=(224, 224, 3))` + Flatten + Dense(7, softmax), built
with tf-keras (Keras 2 semantics, legacy .h5 like the users' file). Without ImageNet weights a
random backbone gives nearly uniform outputs, which prove little about quantization; to get a
model with peaked, realistic outputs, re-estimate the BatchNorm statistics on real photos and
train the Dense head on the backbone's features.
"""

from __future__ import annotations

import numpy as np


def build_seed_model(tf_keras, seed: int = 0):
    tf_keras.utils.set_random_seed(seed)
    base = tf_keras.applications.ResNet50(weights=None, include_top=False, input_shape=(224, 224, 3))
    base.trainable = False
    x = tf_keras.layers.Flatten()(base.output)
    out = tf_keras.layers.Dense(7, activation="softmax")(x)
    return tf_keras.Model(base.input, out)


def reestimate_batchnorm(model, images: np.ndarray, batch: int = 32) -> None:
    """Set every BatchNorm's moving mean/variance to the statistics of `images` (caffe tensors).

    One training-mode pass per batch with momentum 0 would keep only the last batch; instead the
    per-batch statistics are averaged, layer by layer in one pass (each layer normalises with the
    batch statistics, as in training).
    """
    import tensorflow as tf

    bns = [layer for layer in model.layers if "BatchNormalization" in type(layer).__name__]
    sums = {id(b): [0.0, 0.0] for b in bns}
    originals = {}
    for b in bns:
        originals[id(b)] = b.call

        def patched(x, training=None, _b=b):
            mean, var = tf.nn.moments(x, axes=[0, 1, 2])
            sums[id(_b)][0] += mean.numpy()
            sums[id(_b)][1] += var.numpy()
            return tf.nn.batch_normalization(x, mean, var, _b.beta, _b.gamma, _b.epsilon)

        b.call = patched
    n = 0
    try:
        for i in range(0, len(images), batch):
            model(images[i:i + batch], training=False)
            n += 1
    finally:
        for b in bns:
            b.call = originals[id(b)]
    for b in bns:
        b.moving_mean.assign(sums[id(b)][0] / n)
        b.moving_variance.assign(sums[id(b)][1] / n)


def train_head(model, images: np.ndarray, labels: np.ndarray, epochs: int = 80, lr: float = 1e-3) -> float:
    """Train only the Dense head, on features computed once (the backbone is frozen)."""
    import tf_keras

    backbone = tf_keras.Model(model.input, model.layers[-2].output)
    feats = backbone.predict(images, batch_size=32, verbose=0)
    head_in = tf_keras.Input(feats.shape[1:])
    dense = model.layers[-1]
    head = tf_keras.Model(head_in, dense(head_in))
    # Standardised features and a long, fast schedule: the head fits the training photos and its
    # outputs become peaked, like a trained classifier's (the point of the study).
    head.compile(tf_keras.optimizers.Adam(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = head.fit(feats, labels, epochs=epochs, batch_size=32, verbose=0)
    return float(hist.history["accuracy"][-1])
