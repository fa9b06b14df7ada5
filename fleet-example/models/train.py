"""Train the example fleet's models from data that ships in PyPI packages or is generated here.

    python fleet-example/models/train.py [--write-digests]

- digits-cnn: a small CNN on scikit-learn's 8x8 digits (vision). 1.1.0 is trained for a fraction of the
  epochs, so it is deliberately worse and gives gates and canaries something to catch.
- vibration-anomaly: an MLP on log-spectra of synthetic 1-second accelerometer windows (normal, imbalance,
  bearing fault) generated from a fixed seed (industrial IoT).

Deterministic: fixed seeds and TensorFlow op determinism give the same weights on every run (the .keras
zip itself carries timestamps, so its sha256 changes; --write-digests pins the new digests in the specs).
Writes models/<name>/<version>/model.keras and models/<name>/data/{train,eval,calibration}.npz (x, y).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
SEED = 7


def digits_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., None]
    y = digits.target.astype("int64")
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    return {"train": (x[:1300], y[:1300]), "eval": (x[1300:], y[1300:]), "calibration": (x[:200], y[:200])}


def vibration_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Log-magnitude spectra (64 bins) of 1 s windows at 1024 Hz: 0 normal, 1 imbalance, 2 bearing fault."""
    rng = np.random.default_rng(SEED)
    rate, count = 1024, 2400
    t = np.arange(rate) / rate
    labels = rng.integers(0, 3, count)
    windows = np.empty((count, rate), dtype="float64")
    for i, label in enumerate(labels):
        shaft = rng.uniform(20, 30)  # rotation frequency, Hz
        once = 0.5 + (rng.uniform(0.6, 1.2) if label == 1 else 0.0)  # imbalance: a stronger 1x component
        signal = once * np.sin(2 * np.pi * shaft * t + rng.uniform(0, 2 * np.pi))
        signal += 0.2 * np.sin(2 * np.pi * 2 * shaft * t + rng.uniform(0, 2 * np.pi))
        if label == 2:  # bearing fault: decaying resonance bursts at the defect frequency (~3.6x shaft)
            period = 1.0 / (3.6 * shaft)
            phase = (t % period) / period
            signal += rng.uniform(1.0, 2.0) * np.exp(-phase * 10) * np.sin(2 * np.pi * 300 * t)
        windows[i] = signal + rng.normal(0, 0.6, rate)
    spectrum = np.abs(np.fft.rfft(windows, axis=1))[:, 1:513].reshape(count, 64, 8).mean(axis=2)
    x = np.log1p(spectrum).astype("float32")
    x = (x - x[:1800].mean(axis=0)) / x[:1800].std(axis=0)
    y = labels.astype("int64")
    return {"train": (x[:1800], y[:1800]), "eval": (x[1800:], y[1800:]), "calibration": (x[:200], y[:200])}


def digits_model(keras):
    return keras.Sequential(
        [
            keras.Input((8, 8, 1), name="image"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(10, name="logits"),
        ]
    )


def vibration_model(keras, hidden: int):
    return keras.Sequential(
        [
            keras.Input((64,), name="spectrum"),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(hidden // 2, activation="relu"),
            keras.layers.Dense(3, name="logits"),
        ]
    )


def train(build, data, epochs: int):
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    model = build(keras)
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    x, y = data["train"]
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    accuracy = model.evaluate(*data["eval"], verbose=0)[1]
    return model, accuracy


def save(name: str, version: str, model) -> Path:
    path = HERE / name / version / "model.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def write_data(name: str, data) -> None:
    folder = HERE / name / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in data.items():
        np.savez_compressed(folder / f"{split}.npz", x=x, y=y)


def pin_digest(spec: Path, uri: str, digest: str) -> None:
    """Rewrite the sha256 that follows ``uri: <uri>`` in a model spec."""
    text = spec.read_text()
    pattern = re.compile(rf"(uri: {re.escape(uri)}\n\s*sha256: )[0-9a-f]{{64}}")
    text, count = pattern.subn(rf"\g<1>{digest}", text)
    if count != 1:
        raise SystemExit(f"{spec}: found {count} sources with uri {uri}")
    spec.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-digests", action="store_true", help="pin the new sha256 digests in the specs")
    args = parser.parse_args()
    plans = [
        ("digits-cnn", "1.0.0", digits_data, digits_model, 30),
        ("digits-cnn", "1.1.0", digits_data, digits_model, 2),
        ("vibration-anomaly", "1.0.0", vibration_data, lambda k: vibration_model(k, 32), 20),
        ("vibration-anomaly", "2.0.0", vibration_data, lambda k: vibration_model(k, 64), 30),
    ]
    datasets = {}
    for name, version, make_data, build, epochs in plans:
        if name not in datasets:
            datasets[name] = make_data()
            write_data(name, datasets[name])
        model, accuracy = train(build, datasets[name], epochs)
        path = save(name, version, model)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{name} {version}: eval accuracy {accuracy:.4f}, {path.relative_to(HERE.parent)} sha256 {digest}")
        if args.write_digests:
            pin_digest(HERE / f"{name}.yaml", f"models/{name}/{version}/model.keras", digest)


if __name__ == "__main__":
    main()
