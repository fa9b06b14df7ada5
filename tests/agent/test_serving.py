"""The device's inference endpoint: predictions from the active slot, a hot switch to a new version with no
failed request, and serving that goes on while the controller is unreachable."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np

from reconciler.agent.serving import ModelServer

from ..device_fleet import MODEL, Fleet


def predict(url: str, instances: list) -> tuple[int, dict]:
    body = json.dumps({"instances": instances}).encode()
    request = urllib.request.Request(f"{url}/v1/models/{MODEL}:predict", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_serving_hot_switch_and_offline(fleet: Fleet):
    fleet.publish(fleet.release("1.0.0", 1), fleet.release("2.0.0", 2))
    agent = fleet.agent()
    fleet.assign("factory-1", "1.0.0")
    agent.cycle()
    server = ModelServer(agent.data_dir, ("127.0.0.1", 0)).start()
    agent.on_switch = server.reload
    try:
        golden = json.loads((agent.data_dir / "models" / MODEL / "active" / "manifest.json").read_text())["golden"]
        status, body = predict(server.url, golden["inputs"][:4])
        assert status == 200 and body["modelVersion"] == "1.0.0"
        assert np.allclose(body["predictions"], golden["outputs"][:4], atol=golden["tolerance"]["atol"])
        assert predict(server.url, [[1.0, 2.0]])[0] == 400  # wrong input shape: a clear error, not a crash

        # Clients keep calling while the agent switches to 2.0.0: no request fails, both versions answer.
        results: list[tuple[int, str]] = []
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                code, reply = predict(server.url, golden["inputs"][:1])
                results.append((code, reply.get("modelVersion", "")))

        threads = [threading.Thread(target=client) for _ in range(3)]
        for thread in threads:
            thread.start()
        fleet.assign("factory-1", "2.0.0")
        assert agent.cycle()[MODEL].installed_version == "2.0.0"
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join()
        assert results and all(code == 200 for code, _ in results)
        assert {version for _, version in results} == {"1.0.0", "2.0.0"}

        # The controller goes away: the device keeps serving.
        fleet.server.close()
        status, body = predict(server.url, golden["inputs"][:1])
        assert status == 200 and body["modelVersion"] == "2.0.0"
    finally:
        server.close()
