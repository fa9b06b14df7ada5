"""Decisions to webhooks (the Fleet's ``spec.notifications``): a real HTTP receiver gets Slack-shaped and generic
JSON messages for what the controller decided, filtered per target; a receiver answering 503 gets the message
again, one answering 400 does not; a target without its URL is counted, never a stalled cycle; a URL in Git is a
spec error."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reconciler.api import SpecErrors, load_fleet
from reconciler.api.fleet import Notification
from reconciler.cluster import LocalBackend
from reconciler.controller.loop import Controller, ControllerConfig
from reconciler.controller.notify import Notice, Notifier
from reconciler.gitops.files import read_fleet_dir

from ..git_server import GitServer
from .test_controller import register
from .test_state import ROLLOUT, annotate, person_commits


class Receiver:
    """Records every POST by path; answers each path's queued statuses first, then 200."""

    def __init__(self) -> None:
        self.got: dict[str, list[dict]] = {}
        self.answers: dict[str, list[int]] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.got.setdefault(self.path, []).append(body)
                queued = owner.answers.get(self.path) or []
                self.send_response(queued.pop(0) if queued else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture
def receiver():
    found = Receiver()
    yield found
    found.server.shutdown()


def test_decisions_reach_each_webhook_in_its_shape(git_server: GitServer, tmp_path: Path, receiver: Receiver,
                                                     monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    (tmp_path / "slack-url").write_text(receiver.url("/slack") + "\n")
    monkeypatch.setenv("OPS_HOOK", receiver.url("/ops"))
    receiver.answers["/slack"] = [503]  # the first delivery fails for the moment: sent again

    def notifying(work: Path) -> None:
        fleet = work / "fleet.yaml"
        fleet.write_text(
            fleet.read_text()
            + f"""  notifications:
    - name: oncall
      type: slack
      urlFile: {tmp_path / "slack-url"}
      events: [Abort, Rollback]
    - name: ops
      urlEnv: OPS_HOOK
      rollouts: [{ROLLOUT}]
    - name: nowhere
      type: teams
      urlEnv: NO_SUCH_VARIABLE
"""
        )

    url, work = git_server.create("fleet", status_branch="main")
    person_commits(work, "Tell people", notifying)
    register(tmp_path / "state", 40)
    controller = Controller(ControllerConfig(url, tmp_path / "state"), LocalBackend(tmp_path / "state"))
    assert controller.cycle().stalled is None
    person_commits(work, "Abort", annotate("edgereconciler.io/abort", "bad outputs"))
    aborted = controller.cycle()
    assert aborted.stalled is None and aborted.rollbacks
    assert controller.notifier is not None and controller.notifier.flush()

    ops = receiver.got["/ops"]
    assert [m["kind"] for m in ops] == ["Start", "Abort", "Rollback"]
    assert all(m["rollout"] == ROLLOUT and m["fleet"] == "acme-edge" for m in ops)
    assert ops[1]["severity"] == "warning" and "bad outputs" in ops[1]["message"]
    assert ops[2]["commit"] == aborted.rollbacks[0]
    slack = receiver.got["/slack"]
    assert len(slack) == 3  # Abort twice (the 503, then delivered), Rollback once
    assert slack[0] == slack[1] and slack[0]["text"].startswith(f":rotating_light: *Abort: rollout {ROLLOUT}*")
    assert "Rollback" in slack[2]["text"] and aborted.rollbacks[0][:12] in slack[2]["text"]
    sample = controller.metrics.registry.get_sample_value
    assert sample("edge_reconciler_notifications_total", {"target": "oncall", "result": "sent"}) == 2
    # every rollout's decisions: both rollouts start, then the abort and its rollback
    assert sample("edge_reconciler_notifications_total", {"target": "nowhere", "result": "no-url"}) == 4
    assert "NO_SUCH_VARIABLE" not in os.environ


def test_a_refusal_is_not_sent_again_and_a_dead_receiver_is_given_up(receiver: Receiver):
    results = []
    notifier = Notifier(lambda target, result: results.append((target, result)), backoff=0.01)
    receiver.answers["/refuses"] = [400]
    receiver.answers["/down"] = [503] * 10
    os.environ["EDGE_TEST_REFUSES"], os.environ["EDGE_TEST_DOWN"] = receiver.url("/refuses"), receiver.url("/down")
    try:
        targets = [Notification(name="refuses", url_env="EDGE_TEST_REFUSES"),
                   Notification(name="down", url_env="EDGE_TEST_DOWN", type="teams")]  # fmt: skip
        notice = Notice("Abort", "r", "failureRate 0.5 > 0.05", "2026-01-01T00:00:00+00:00", warning=True)
        assert notifier.send(targets, [notice], "acme") == 2
        assert notifier.flush()
    finally:
        del os.environ["EDGE_TEST_REFUSES"], os.environ["EDGE_TEST_DOWN"]
        notifier.close()
    assert sorted(results) == [("down", "failed"), ("refuses", "refused")]
    assert len(receiver.got["/refuses"]) == 1 and len(receiver.got["/down"]) == 5
    assert receiver.got["/down"][0]["@type"] == "MessageCard" and receiver.got["/down"][0]["themeColor"] == "C4314B"


def test_a_webhook_url_in_git_is_a_spec_error(tmp_path: Path, fleet_example: Path):
    import shutil

    repo = Path(shutil.copytree(fleet_example, tmp_path / "fleet", ignore=shutil.ignore_patterns("*.keras", "*.npz")))
    fleet = repo / "fleet.yaml"
    fleet.write_text(fleet.read_text() + "  notifications:\n    - {name: leaky, urlEnv: A, urlFile: /b}\n")
    with pytest.raises(SpecErrors) as refused:
        load_fleet(read_fleet_dir(repo))
    assert "set exactly one of urlFile or urlEnv" in str(refused.value)
