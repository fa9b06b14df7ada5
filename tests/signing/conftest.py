"""Fixtures for the trust tests: real keys, real ONNX artifacts, signed with model-signing, served over HTTP."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from reconciler.signing import (
    KeyPair,
    Release,
    ReleaseSigner,
    TrustPolicy,
    generate_key,
    sign_with_key,
    write_release,
)

DATA = Path(__file__).parent / "data"


def onnx_model(seed: int, width: int = 4) -> bytes:
    """A real (tiny) ONNX classifier: y = softmax(x @ W)."""
    import numpy as np

    weights = np.random.default_rng(seed).normal(size=(width, 3)).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"]), helper.make_node("Softmax", ["logits"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(weights, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def write_artifact(directory: Path, model: str, version: str, profile: str, seed: int = 0) -> Path:
    """An unsigned artifact directory shaped like the build pipeline's: model file + manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = onnx_model(seed)
    onnx.checker.check_model(onnx.load_from_string(payload))
    (directory / "model.onnx").write_bytes(payload)
    manifest = {
        "apiVersion": "edgereconciler.io/v1alpha1",
        "kind": "ArtifactManifest",
        "model": model,
        "version": version,
        "profile": profile,
        "format": "onnx",
        "files": {"model.onnx": {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return directory


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    """Release keys of two model owners, the controller's online key, and a key nobody trusts."""
    folder = tmp_path_factory.mktemp("keys")
    return {name: generate_key(folder / name) for name in ("owner", "vision-owner", "controller", "stranger")}


@pytest.fixture
def policy(keys: dict[str, KeyPair]) -> TrustPolicy:
    return TrustPolicy(
        (
            ReleaseSigner("owner", public_key=keys["owner"].public),
            ReleaseSigner("vision-owner", public_key=keys["vision-owner"].public, models=("digits-*",)),
        )
    )


SignedArtifact = Callable[..., Path]


@pytest.fixture
def signed_artifact(tmp_path: Path, keys: dict[str, KeyPair]) -> SignedArtifact:
    """Build and release an artifact: ``signed_artifact(model=..., key="owner", counter=1, ...)``."""

    def make(
        model: str = "vibration-anomaly",
        version: str = "2.0.0",
        profile: str = "arm-cortex-a-cpu",
        key: str = "owner",
        counter: int = 2,
        minimum_counter: int = 0,
        released_for: tuple[str, ...] | None = None,
        name: str | None = None,
        seed: int = 0,
    ) -> Path:
        directory = write_artifact(tmp_path / (name or f"{model}-{version}-{profile}"), model, version, profile, seed)
        write_release(directory, Release(model, version, released_for or (profile,), counter, minimum_counter))
        sign_with_key(directory, keys[key].private)
        return directory

    return make


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on loopback serving a folder: (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def keyless_model(tmp_path: Path) -> Path:
    """A copy of the real keyless-signed model (tests may tamper with it)."""
    return Path(shutil.copytree(DATA / "keyless" / "model", tmp_path / "keyless-model"))
