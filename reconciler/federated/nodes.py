"""A device's SuperNode: the agent's child process that takes part in one federated training.

Who calls it: the agent, for an assignment that calls it to a training (``TrainingCall``), once its own checks
pass (enough labeled rows, the base version serving). The SuperNode authenticates with the device's identity key
(the one the fleet CA certified; written in OpenSSH form beside it, as Flower reads it) and trusts the fleet CA
for the SuperLink's certificate. Its work folder keeps the features cache and the last round trained.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from reconciler.durable import write_atomic

from .processes import Child, flower_environment, free_port

PROGRESS = "progress.json"
"""In a node's work folder: the last round it trained (the agent reports it)."""


@dataclass(frozen=True)
class NodeSettings:
    device: str
    superlink: str
    ca_file: Path
    identity_pem: Path
    """The device's certificate and private key (PEM), as its device API client keeps them."""
    model: Path
    """The artifact the device serves (its features are what the head trains on)."""
    data: Path
    min_samples: int
    work: Path


class SuperNode:
    def __init__(self, settings: NodeSettings, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.env = env or {}
        self.child: Child | None = None

    def start(self) -> SuperNode:
        s = self.settings
        s.work.mkdir(parents=True, exist_ok=True)
        key = s.work / "node-key"
        write_atomic(key, openssh_private_key(s.identity_pem.read_bytes()), mode=0o600)
        config = " ".join(f'{k}="{v}"' for k, v in (("device", s.device), ("model", s.model), ("data", s.data),
                                                     ("work", s.work))) + f" min-samples={s.min_samples}"  # fmt: skip
        command = [sys.executable, "-m", "reconciler.federated.node", "--superlink", s.superlink,
                   "--root-certificates", str(s.ca_file), "--auth-supernode-private-key", str(key),
                   "--node-config", config, "--host", "127.0.0.1", "--port", str(free_port())]  # fmt: skip
        self.child = Child(command, s.work / "supernode.log", flower_environment(self.env))
        return self

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    def progress(self) -> dict:
        """The last round this device trained (``round``, ``stage``), or {}."""
        try:
            found = json.loads((self.settings.work / PROGRESS).read_text())
        except (OSError, ValueError):
            return {}
        return found if isinstance(found, dict) else {}


def openssh_private_key(pem: bytes) -> bytes:
    """The EC private key of a PEM bundle (certificate and key) in the OpenSSH form Flower reads."""
    key = serialization.load_pem_private_key(_private_block(pem), password=None)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())  # fmt: skip


def _private_block(pem: bytes) -> bytes:
    start = pem.find(b"-----BEGIN PRIVATE KEY-----")
    if start < 0:
        start = pem.find(b"-----BEGIN EC PRIVATE KEY-----")
    if start < 0:
        raise ValueError("no private key in the device's identity file")
    return pem[start:]
