"""The Flower app of a FederatedTraining: the server's rounds (beside the controller) and a device's local training.

Who runs it: Flower, never this project directly. The SuperLink starts ``server_app`` (``flwr-serverapp``) for each
run the controller submits; each device's SuperNode starts ``client_app`` (``flwr-clientapp``) for each message.
Both read the run's settings from the run config (:func:`reconciler.federated.runs.run_config` writes it) and the
device's from the SuperNode's node config (:mod:`reconciler.federated.nodes`).

The server first asks every connected node for its properties (rows, whether its artifact has the base's
features) and samples only the able ones; a device without data is never sampled. Rounds are FedAvg over the
classifier head, under SecAgg+ when asked: each update is clipped, quantized and masked on the device and the
server unmasks only the sum. A node that dies mid-round is left out of that round by the round timeout and
SecAgg+'s share threshold, and out of later rounds (only connected nodes are sampled). The result (the head and
every round's figures) is written to the run's result folder, where the controller picks it up.

Flower's own loops sleep a fixed 3 s between polls (flwr 1.42: ``HttpGrid.send_and_receive``); the server here
polls every ``poll-interval`` instead (a SecAgg+ round is four exchanges).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.common import GetPropertiesIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig, SimpleClientManager
from flwr.server.criterion import Criterion
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.default_workflows import default_fit_workflow

from reconciler.faults import FaultPoints

from .nodes import PROGRESS
from .runs import RESULT, ROUNDS, TRAINED

log = logging.getLogger("edge_reconciler.federated")

FAULTS = FaultPoints("EDGE_TRAINING", ("fit-round-N",))
"""Where a dropout test holds a device's training (``EDGE_TRAINING_HANG_AT=fit-round-2``): mid-round, for a kill."""


# --- the device's side --------------------------------------------------------------------------------------------


class HeadClient(NumPyClient):
    """One device's training: its labeled rows, through the model it serves, into the classifier head."""

    def __init__(self, context: Context) -> None:
        self.run, self.node = context.run_config, context.node_config
        self.work = Path(str(self.node.get("work", ".")))

    def get_properties(self, config: dict) -> dict:
        rows, reason = self._rows()
        samples = 0 if rows is None else len(rows[1])
        classes = int(self.run.get("classes", 0))
        if rows is not None and classes and (rows[1].min(initial=0) < 0 or rows[1].max(initial=0) >= classes):
            rows, reason = None, f"labels outside the model's {classes} classes"
        elif rows is not None and not np.isfinite(rows[0]).all():
            rows, reason = None, "inputs that are not finite numbers"
        if rows is not None and samples < int(self.node.get("min-samples", 1)):
            reason = f"{samples} labeled rows, fewer than the {int(self.node.get('min-samples', 1))} asked for"
        able = not reason
        if able:
            try:
                self._features()
            except Exception as exc:  # an artifact without the base's features, one onnxruntime cannot load
                able, reason = False, f"{type(exc).__name__}: {exc}"
        return {"device": str(self.node.get("device", "")), "samples": samples, "able": able, "reason": reason[:500]}

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        from .head import accuracy, train_head

        round_number = int(config.get("round", 0))
        _write_progress(self.work, round_number, "training")
        FAULTS.hang(f"fit-round-{round_number}")
        features, labels = self._features()
        weight, bias = parameters
        before = accuracy(weight, bias, features, labels)
        weight, bias, loss = train_head(weight, bias, features, labels, epochs=int(self.run["local-epochs"]),
                                        learning_rate=float(self.run["learning-rate"]),
                                        batch_size=int(self.run["batch-size"]), seed=round_number)  # fmt: skip
        _write_progress(self.work, round_number, "trained")
        return [weight, bias], len(labels), {"accuracy": before, "loss": loss}

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        from .head import accuracy

        features, labels = self._features()
        weight, bias = parameters
        return 0.0, len(labels), {"accuracy": accuracy(weight, bias, features, labels)}

    def _rows(self) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
        from .data import labeled_rows

        return labeled_rows(Path(str(self.node.get("data", ""))))

    def _features(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows' features through the served model, computed once per (model, rows, tensor) and kept: Flower
        starts a fresh process for every message."""
        model = Path(str(self.node.get("model", "")))
        rows, reason = self._rows()
        if rows is None:
            raise ValueError(reason)
        inputs, labels = rows
        key = hashlib.sha256()
        key.update(model.read_bytes())
        key.update(np.ascontiguousarray(inputs).tobytes())
        key.update(str(self.run["features"]).encode())
        cache = self.work / f"features-{key.hexdigest()[:24]}.npy"
        if cache.exists():
            return np.load(cache), labels
        from .head import Features

        features = Features(model, str(self.run["features"]), int(self.run["width"]))(inputs)
        self.work.mkdir(parents=True, exist_ok=True)
        np.save(cache, features)
        return features, labels


def _write_progress(work: Path, round_number: int, stage: str) -> None:
    work.mkdir(parents=True, exist_ok=True)
    temporary = work / f".{PROGRESS}.{os.getpid()}"
    temporary.write_text(json.dumps({"round": round_number, "stage": stage, "at": time.time()}))
    temporary.replace(work / PROGRESS)


def _client(context: Context):
    return HeadClient(context).to_client()


def _secure_when_asked(message: Message, context: Context, call_next):
    """SecAgg+ on the device exactly when the run uses it (one app serves both kinds of run)."""
    if context.run_config.get("secagg"):
        return secaggplus_mod(message, context, call_next)
    return call_next(message, context)


client_app = ClientApp(client_fn=_client, mods=[_secure_when_asked])


# --- the server's side --------------------------------------------------------------------------------------------


class AtLeast(FedAvg):
    """FedAvg that takes a round's sum only from ``min_fit_clients`` updates or more (fewer: the head stays)."""

    def aggregate_fit(self, server_round, results, failures):
        if len(results) < self.min_fit_clients:
            log.warning("round %s: %s update(s), fewer than %s: not aggregated", server_round, len(results),
                        self.min_fit_clients)  # fmt: skip
            return None, {}
        return super().aggregate_fit(server_round, results, failures)


class _Fitted:
    """A workflow setting computed each time Flower reads it (after the round's sample is drawn); what Flower's
    constructor writes to it is ignored."""

    def __init__(self, compute: Callable[[Any], Any]) -> None:
        self.compute = compute

    def __get__(self, workflow: Any, owner: type | None = None) -> Any:
        return self.compute(workflow)

    def __set__(self, workflow: Any, value: object) -> None:
        pass


class FittedSecAgg(SecAggPlusWorkflow):
    """SecAgg+ whose shares and threshold fit each round's sample (read by Flower right after it sampled).
    ``shares`` 0: every sampled device; more than were sampled (dropouts before the round): the largest odd number
    there is (an even number below the sample breaks SecAgg+). ``threshold`` 0: just over half the shares; never
    all of them."""

    def __init__(self, shares: int, threshold: int, sampled: Callable[[], int], heaviest: Callable[[], float],
                 **settings: Any) -> None:  # fmt: skip
        """``sampled()``: devices in the round being set up; ``heaviest()``: the most rows an able device holds
        (each update is weighted by rows / that)."""
        self.asked, self.sampled, self.heaviest = (shares, threshold), sampled, heaviest
        super().__init__(3, 2, **settings)

    def _fitted(self) -> tuple[int, int]:
        asked_shares, asked_threshold = self.asked
        sampled = max(self.sampled(), 3)
        shares = sampled if not asked_shares or asked_shares >= sampled else asked_shares
        if shares < sampled and shares % 2 == 0:
            shares -= 1
        threshold = max(min(asked_threshold or shares // 2 + 1, shares - 1), 2)
        return shares, threshold

    num_shares = _Fitted(lambda workflow: workflow._fitted()[0])
    reconstruction_threshold = _Fitted(lambda workflow: workflow._fitted()[1])
    max_weight = _Fitted(lambda workflow: max(workflow.heaviest(), 1.0))


class _Able(Criterion):
    def __init__(self, able: set[int]) -> None:
        self.able = able

    def select(self, client) -> bool:
        return client.node_id in self.able


class AbleClients(SimpleClientManager):
    """Samples only nodes that said they can train, at most ``per_round`` of them; remembers each round's sample."""

    def __init__(self, per_round: int) -> None:
        super().__init__()
        self.per_round = per_round
        self.able: set[int] = set()
        self.sampled: list[int] = []

    def num_available(self) -> int:
        return sum(1 for client in self.clients.values() if client.node_id in self.able)

    def sample(self, num_clients: int, min_num_clients: int | None = None, criterion: Criterion | None = None):
        available = self.num_available()
        wanted = min(num_clients, self.per_round, available)
        chosen = super().sample(wanted, min(min_num_clients or wanted, available) or None, criterion=_Able(self.able))
        self.sampled.append(len(chosen))
        return chosen


class Traffic:
    """Bytes of the messages the server sent and received (their serialized size, before HTTP and TLS)."""

    def __init__(self) -> None:
        self.sent = self.received = 0

    def take(self) -> tuple[int, int]:
        counted = (self.sent, self.received)
        self.sent = self.received = 0
        return counted


def _size(message: Message) -> int:
    from flwr.common.serde import message_to_proto

    try:
        return message_to_proto(message).ByteSize()
    except Exception:  # a message the serializer refuses is not ours to fail on: it goes uncounted
        return 0


def _poll_every(grid: Grid, interval: float, traffic: Traffic) -> None:
    """Flower's grid polls its replies every 3 s: a round of SecAgg+ (four exchanges) waits 12 s on polls alone.
    Every message's size is counted on the way (what a device sends and receives per round)."""

    def send_and_receive(messages, *, timeout: float | None = None):
        messages = list(messages)
        traffic.sent += sum(_size(m) for m in messages)
        waiting = set(grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies = []
        while waiting:
            found = list(grid.pull_messages(waiting))
            traffic.received += sum(_size(m) for m in found)
            replies.extend(found)
            waiting.difference_update(m.metadata.reply_to_message_id for m in found)
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(interval)
        return replies

    grid.send_and_receive = send_and_receive  # type: ignore[method-assign]


def _properties(grid: Grid, nodes: list[int], timeout: float) -> dict[int, dict]:
    content = compat.getpropertiesins_to_recorddict(GetPropertiesIns({}))
    messages = [Message(content=content, dst_node_id=node, message_type=MessageTypeLegacy.GET_PROPERTIES,
                        group_id="properties") for node in nodes]  # fmt: skip
    found: dict[int, dict] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_content():
            found[reply.metadata.src_node_id] = dict(compat.recorddict_to_getpropertiesres(reply.content).properties)
    return found


server_app = ServerApp()


@server_app.main()
def _serve(grid: Grid, context: Context) -> None:
    config = context.run_config
    out = Path(str(config["result-dir"]))
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = _train(grid, context, out)
    except Exception as exc:  # written down for the controller: a run that ends without a result says why
        log.exception("training failed")
        result = {"phase": "Failed", "message": f"{type(exc).__name__}: {exc}"}
    _write_json(out / RESULT, result)


def _train(grid: Grid, context: Context, out: Path) -> dict[str, Any]:
    config = context.run_config
    traffic = Traffic()
    _poll_every(grid, float(config.get("poll-interval", 0.2)), traffic)
    started = time.monotonic()
    head = np.load(str(config["head"]))
    weight, bias = head["weight"], head["bias"]
    min_clients, per_round = int(config["min-clients"]), int(config["clients-per-round"])
    manager = AbleClients(per_round)
    properties: dict[int, dict] = {}
    # Devices join as their agents hear of the training: ask every new node what it can do, until a round's worth
    # can (or, after the join timeout, at least the minimum); later ones are asked before each round.
    while True:
        _ask_new(grid, properties, manager, float(config.get("round-timeout", 300)))
        waited = time.monotonic() - started
        if len(manager.able) >= per_round or (len(manager.able) >= min_clients and
                                              waited >= float(config.get("join-timeout", 600))):  # fmt: skip
            break
        if waited > float(config.get("wait-timeout", 3600)):
            return {"phase": "Failed", "message": f"{len(manager.able)} device(s) able to train joined, fewer than "
                    f"minClients ({min_clients})", **_who(properties)}  # fmt: skip
        time.sleep(1.0)
    traffic.take()  # the rounds' bytes start here
    rounds: list[dict[str, Any]] = []
    strategy = AtLeast(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=min_clients, min_evaluate_clients=min_clients,
        min_available_clients=min_clients, initial_parameters=ndarrays_to_parameters([weight, bias]),
        on_fit_config_fn=lambda r: {"round": r}, fit_metrics_aggregation_fn=_weighted(rounds, out / ROUNDS, traffic),
    )  # fmt: skip
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=int(config["rounds"]),
                           round_timeout=float(config["round-timeout"])), strategy=strategy,
                           client_manager=manager)  # fmt: skip
    if config.get("secagg"):
        fit = FittedSecAgg(
            int(config.get("shares", 0)), int(config.get("threshold", 0)),
            lambda: manager.sampled[-1] if manager.sampled else len(manager.able),
            lambda: float(max((int(p.get("samples", 0)) for n, p in properties.items() if n in manager.able),
                              default=1)),
            clipping_range=float(config["clipping-range"]),
            quantization_range=int(config["quantization-range"]), timeout=float(config["round-timeout"]),
        )  # fmt: skip
    else:
        fit = default_fit_workflow
    timings: list[float] = []

    def timed_fit(grid_: Grid, context_: Context) -> None:
        begun = time.monotonic()
        _ask_new(grid, properties, manager, float(config["round-timeout"]))
        fit(grid_, context_)
        timings.append(time.monotonic() - begun)

    DefaultWorkflow(fit_workflow=timed_fit, evaluate_workflow=lambda *_: None)(grid, legacy)
    final = parameters_to_ndarrays(compat.arrayrecord_to_parameters(legacy.state.array_records["parameters"],
                                                                    keep_input=True))  # fmt: skip
    np.savez(out / TRAINED, weight=final[0], bias=final[1])
    evaluated = _evaluate(grid, manager, final, float(config["round-timeout"]))
    for index, figures in enumerate(rounds):
        figures["seconds"] = timings[index] if index < len(timings) else 0.0
        sampled = manager.sampled[index] if index < len(manager.sampled) else figures["participants"]
        figures["dropped"] = max(sampled - figures["participants"], 0)
    completed = len(rounds)
    phase = "Succeeded" if completed == int(config["rounds"]) else "Failed"
    message = "" if phase == "Succeeded" else (f"{completed} of {config['rounds']} rounds aggregated (too few "
                                               "updates or shares in the others)")  # fmt: skip
    return {"phase": phase, "message": message, "rounds": rounds, "final": evaluated, **_who(properties)}


def _ask_new(grid: Grid, properties: dict[int, dict], manager: AbleClients, timeout: float) -> None:
    """Ask the nodes that connected since last time what they can do; the able ones may be sampled from now on."""
    nodes = [n for n in grid.get_node_ids() if n not in properties]
    if nodes:
        properties.update(_properties(grid, nodes, timeout))
    manager.able = {n for n, p in properties.items() if p.get("able")}


def _evaluate(grid: Grid, manager: AbleClients, head: list[np.ndarray], timeout: float) -> dict[str, Any]:
    """The proposed head measured by the able devices still connected, on their own rows (weighted by rows): the
    figure the new version's lineage carries."""
    from flwr.app import MessageType
    from flwr.common import EvaluateIns

    nodes = sorted(set(grid.get_node_ids()) & manager.able)
    content = compat.evaluateins_to_recorddict(EvaluateIns(ndarrays_to_parameters(head), {}), keep_input=True)
    messages = [Message(content=content, dst_node_id=node, message_type=MessageType.EVALUATE, group_id="final")
                for node in nodes]  # fmt: skip
    answers = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_content():
            found = compat.recorddict_to_evaluateres(reply.content)
            answers.append((found.num_examples, float(found.metrics.get("accuracy", 0.0))))
    rows = sum(n for n, _ in answers)
    return {"devices": len(answers), "samples": rows,
            "accuracy": sum(n * a for n, a in answers) / rows if rows else None}  # fmt: skip


def _weighted(rounds: list[dict[str, Any]], progress: Path, traffic: Traffic):
    """The fit metrics' aggregation: weighted by rows, and each round's participants and rows kept (and written
    to ``progress``, for the status of a running training)."""

    def aggregate(results: list[tuple[int, dict]]) -> dict:
        total = sum(n for n, _ in results) or 1
        figures = {key: sum(n * float(m.get(key, 0.0)) for n, m in results) / total for key in ("accuracy", "loss")}
        sent, received = traffic.take()
        rounds.append({"round": len(rounds) + 1, "participants": len(results), "bytesSent": sent,
                       "bytesReceived": received, "samples": sum(n for n, _ in results), **figures})  # fmt: skip
        _write_json(progress, {"rounds": rounds})
        return figures

    return aggregate


def _who(properties: dict[int, dict]) -> dict[str, Any]:
    joined = {str(p.get("device") or n): int(p.get("samples", 0)) for n, p in properties.items() if p.get("able")}
    declined = {str(p.get("device") or n): str(p.get("reason") or "unable") for n, p in properties.items()
                if not p.get("able")}  # fmt: skip
    return {"joined": joined, "declined": declined}


def _write_json(path: Path, body: dict) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(body, indent=1, sort_keys=True, default=str))
    temporary.replace(path)
