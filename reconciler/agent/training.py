"""Federated training on this device: a SuperNode per training the fleet calls the device to, when it can help.

Who calls it: the agent, every cycle, with its assignments. An assignment carrying a ``TrainingCall`` asks the
device to take part; the device joins only when the base version is the one it serves (its features are what the
head trains on), its artifact is ONNX, and it holds at least ``minSamples`` labeled rows. Joining asks the device
API to let this device's identity key into the SuperLink, then starts the SuperNode as a child process with that
key. A call that goes away stops it; a SuperNode that dies is started again next cycle. Serving is never touched:
training reads the active slot's model file and the labeled rows, nothing else.

What the agent reports, with the model's status: ``training``, ``trainingState`` (Joined, Declined, Waiting),
``trainingRound`` (the last round this device trained) and ``trainingMessage`` (why it declined or waits).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from reconciler.deviceapi.client import DeviceClient, DeviceRefusedError
from reconciler.errors import TemporaryError
from reconciler.federated.data import labeled_rows
from reconciler.federated.nodes import NodeSettings, SuperNode
from reconciler.plan import Desired

from .slots import ModelSlots

log = logging.getLogger("edge_reconciler.agent.training")


class Participation:
    def __init__(self, data_dir: Path, device: str, client: DeviceClient | None) -> None:
        self.data_dir, self.device, self.client = Path(data_dir), device, client
        self.nodes: dict[str, SuperNode] = {}

    def converge(self, assignments: dict[str, tuple[Desired, int]]) -> dict[str, dict]:
        """model -> the figures its status report carries about the training it is called to."""
        figures: dict[str, dict] = {}
        called = {}
        for model, (spec, _) in sorted(assignments.items()):
            if spec.training is not None and not spec.benchmark:
                called[spec.training.name] = spec
                try:
                    figures[model] = self._take_part(spec)
                except Exception as exc:  # training is extra work: it never stops the agent or its models
                    log.warning("training not joined", extra={"training": spec.training.name,
                                                              "error": f"{type(exc).__name__}: {exc}"})  # fmt: skip
                    figures[model] = self._figures(spec.training.name, "Declined",
                                                   message=f"{type(exc).__name__}: {exc}")  # fmt: skip
        for name in set(self.nodes) - set(called):
            log.info("training over", extra={"training": name})
            self._leave(name)
        return figures

    def stop(self) -> None:
        for name in list(self.nodes):
            self._leave(name)

    def _leave(self, name: str) -> None:
        """Stop the training's SuperNode and remove the copy of the identity key it used."""
        node = self.nodes.pop(name)
        node.stop()
        (node.settings.work / "node-key").unlink(missing_ok=True)

    def _take_part(self, spec: Desired) -> dict:
        call = spec.training
        assert call is not None
        node = self.nodes.get(call.name)
        if node is not None and node.alive():
            return self._figures(call.name, "Joined", node)
        slots = ModelSlots(self.data_dir, spec.model)
        state, active = slots.state(), slots.active_dir()
        if state.active_version != spec.version or active is None:
            return self._figures(call.name, "Waiting", message=f"serving {state.active_version or 'nothing'}, the "
                                 f"training starts from {spec.version}")  # fmt: skip
        models = sorted(active.glob("*.onnx"))
        if call.trainer != "head" or not models:
            return self._figures(call.name, "Declined", message=f"the {call.trainer} trainer needs an ONNX artifact "
                                 "on this device")  # fmt: skip
        data = self._data_folder(spec)
        rows, reason = labeled_rows(data)
        count = 0 if rows is None else len(rows[1])
        if count < call.min_samples:
            return self._figures(call.name, "Declined", message=reason or f"{count} labeled rows, fewer than the "
                                 f"{call.min_samples} the training asks for")  # fmt: skip
        if self.client is None:
            return self._figures(call.name, "Declined", message="no device API to join through")
        missing = [name for name in ("flwr", "onnxruntime") if importlib.util.find_spec(name) is None]
        if missing:
            return self._figures(call.name, "Declined", message=f"this agent is installed without {', '.join(missing)}"
                                 " (edge-reconciler[federated])")  # fmt: skip
        try:
            self.client.join_training(call.name)
        except DeviceRefusedError as exc:
            return self._figures(call.name, "Declined", message=f"the device API refused: {exc}")
        except TemporaryError as exc:
            return self._figures(call.name, "Waiting", message=str(exc))
        superlink = call.superlink or self.client.url.split("://", 1)[-1].rstrip("/")
        settings = NodeSettings(self.device, superlink, self.client.files.ca, self.client.files.pem, models[0],
                                data, call.min_samples, self.data_dir / "training" / call.name)  # fmt: skip
        if node is not None:
            last_words = node.child.tail(5) if node.child else ""
            log.warning("SuperNode exited, starting it again", extra={"training": call.name, "log": last_words})
            node.stop()  # whatever it started and left behind goes with it
        self.nodes[call.name] = node = SuperNode(settings).start()
        log.info("joined training", extra={"training": call.name, "rows": count})
        return self._figures(call.name, "Joined", node)

    def _data_folder(self, spec: Desired) -> Path:
        call = spec.training
        assert call is not None
        if call.data == "capture":
            return self.data_dir / "capture" / "pending" / spec.model / spec.version
        path = Path(call.path)
        return path if path.is_absolute() else self.data_dir / path

    @staticmethod
    def _figures(name: str, state: str, node: SuperNode | None = None, message: str = "") -> dict:
        figures: dict = {"training": name, "trainingState": state}
        if node is not None and (round_number := node.progress().get("round")):
            figures["trainingRound"] = int(round_number)
        if message:
            figures["trainingMessage"] = message[:500]
        return figures
