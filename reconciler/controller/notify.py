"""Decisions to chat and incident tools: the Fleet's ``spec.notifications`` webhooks (generic JSON, Slack, Teams).

Who calls it: the controller, once per cycle, with the cycle's decisions (start, promote, pause, succeed, abort,
retry), rollback commits and releases it refused to publish. Sending happens on a thread of its own: a slow or
failing receiver never holds a cycle. Each message is tried ``ATTEMPTS`` times with a doubling backoff (a 5xx,
a 429 or no answer is tried again; another 4xx is not: the receiver refused the message itself); what is finally
lost is logged and counted (``edge_reconciler_notifications_total{result}``). URLs are secrets: read from a file
or an environment variable of the controller (a mounted Secret), never from Git, and never logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from reconciler.api.fleet import Notification

log = logging.getLogger("edge_reconciler.notify")
ATTEMPTS = 5
BACKOFF = 1.0
"""Seconds before the second attempt; doubled each time after."""
TIMEOUT = urllib3.Timeout(connect=5.0, read=15.0)


@dataclass(frozen=True)
class Notice:
    """One thing that happened, as every receiver shape is made from it."""

    kind: str
    """``Start``, ``Promote``, ``Pause``, ``Succeed``, ``Abort``, ``Retry``, ``Rollback``, ``ReleaseRefused`` or
    ``BuildRefused``."""
    rollout: str | None
    message: str
    time: str
    commit: str | None = None
    phase: str | None = None
    warning: bool = False

    def body(self, shape: str, fleet: str) -> dict[str, Any]:
        about = f"rollout {self.rollout}" if self.rollout else f"fleet {fleet}"
        title = f"{self.kind}: {about}"
        if shape == "slack":
            mark = ":rotating_light:" if self.warning else ":white_check_mark:"
            return {"text": f"{mark} *{title}*: {self.message}" + (f" (commit {self.commit[:12]})" if self.commit
                                                                    else "")}  # fmt: skip
        if shape == "teams":
            colour = "C4314B" if self.warning else "2EB886"
            return {"@type": "MessageCard", "@context": "https://schema.org/extensions", "summary": title,
                    "title": title, "text": self.message, "themeColor": colour}  # fmt: skip
        return {"kind": self.kind, "fleet": fleet, "rollout": self.rollout, "message": self.message,
                "time": self.time, "commit": self.commit, "phase": self.phase,
                "severity": "warning" if self.warning else "info"}  # fmt: skip


def wanted(target: Notification, notice: Notice) -> bool:
    if notice.kind not in target.events:
        return False
    return not target.rollouts or notice.rollout in target.rollouts


def target_url(target: Notification) -> str | None:
    """The webhook's URL from the controller's file or environment; None (logged) when it is not there."""
    try:
        if target.url_file is not None:
            return Path(target.url_file).read_text().strip() or None
        return os.environ.get(target.url_env or "") or None
    except OSError as exc:
        log.warning("notification URL unreadable", extra={"target": target.name, "error": exc.strerror})
        return None


class Notifier:
    """Sends on its own thread; ``send`` only queues."""

    def __init__(self, on_result: Callable[[str, str], None] | None = None, sleep: Callable[[float], None] = time.sleep,
                 backoff: float = BACKOFF) -> None:  # fmt: skip
        """``on_result(target, result)``: counts each message's end (sent, failed, refused, no-url)."""
        self.on_result = on_result or (lambda target, result: None)
        self.sleep, self.backoff = sleep, backoff
        self._queue: queue.Queue[tuple[Notification, Notice, str] | None] = queue.Queue(maxsize=1000)
        self._pool = urllib3.PoolManager(retries=False, timeout=TIMEOUT)
        self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
        self._thread.start()

    def send(self, targets: Iterable[Notification], notices: Iterable[Notice], fleet: str) -> int:
        """Queue every notice each target wants; returns how many were queued (a full queue drops, counted)."""
        queued = 0
        for notice in notices:
            for target in targets:
                if not wanted(target, notice):
                    continue
                try:
                    self._queue.put_nowait((target, notice, fleet))
                    queued += 1
                except queue.Full:
                    self.on_result(target.name, "dropped")
        return queued

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything queued so far was sent or given up (for tests and a graceful stop)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self._queue.unfinished_tasks

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                target, notice, fleet = item
                self.on_result(target.name, self._deliver(target, notice, fleet))
            except Exception:  # a defect must not end the thread: later notices still go out
                log.exception("notification failed unexpectedly")
            finally:
                self._queue.task_done()

    def _deliver(self, target: Notification, notice: Notice, fleet: str) -> str:
        url = target_url(target)
        if url is None:
            log.warning("notification has no URL", extra={"target": target.name})
            return "no-url"
        body = json.dumps(notice.body(target.type, fleet)).encode()
        wait = self.backoff
        for attempt in range(1, ATTEMPTS + 1):
            status = None
            with contextlib.suppress(urllib3.exceptions.HTTPError):  # no answer: tried again
                status = self._pool.request("POST", url, body=body, headers={"Content-Type": "application/json"}).status
            if status is not None and 200 <= status < 300:
                return "sent"
            if status is not None and 400 <= status < 500 and status != 429:
                log.warning("notification refused", extra={"target": target.name, "status": status})
                return "refused"
            if attempt < ATTEMPTS:
                self.sleep(wait)
                wait *= 2
        log.warning("notification not delivered", extra={"target": target.name, "attempts": ATTEMPTS})
        return "failed"
