"""A temporary log level, asked for from Git (``edgectl debug``), that the agent drops by its own clock.

Who calls it: the agent, every cycle, with the debug level its assignments carry (a DebugSession's), and
after each cycle to hand the recent lines to the device API. While a level is asked for and its ``until`` lies
ahead, the agent's loggers take it and a bounded buffer keeps their lines for upload; at ``until`` (offline or
not) or when the assignment no longer asks, the agent's own level comes back and nothing more is kept. Lines not
yet uploaded stay in the buffer (the oldest go first past ``CAPACITY``); a failed upload puts them back.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from reconciler.api.types import parse_moment
from reconciler.plan.desired import Debug

CAPACITY = 2000
"""Lines kept for upload at most."""
BATCH = 500
"""Lines one upload carries at most."""
MESSAGE = 2000
"""Characters of one line kept."""
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}


class RecentLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: deque[dict] = deque(maxlen=CAPACITY)
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string in someone's log call: keep what there is
            message = str(record.msg)
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}
        if extra:
            message = f"{message} {extra}"
        line = {"time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(), "logger": record.name, "message": message[:MESSAGE]}  # fmt: skip
        with self.guard:
            self.lines.append(line)


_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class Verbosity:
    def __init__(self, logger: str = "edge_reconciler", clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.logger = logging.getLogger(logger)
        self.clock = clock
        self.own_level = self.logger.level
        self.handler = RecentLines()
        self.active: Debug | None = None

    def apply(self, debug: Debug | None) -> bool:
        """Take ``debug`` while its ``until`` lies ahead; the agent's own level otherwise. True while taken."""
        until = parse_moment(debug.until) if debug is not None else None
        wanted = debug if debug is not None and until is not None and until > self.clock() else None
        if wanted == self.active:
            return wanted is not None
        if wanted is None:
            self.logger.setLevel(self.own_level)
            self.logger.removeHandler(self.handler)
            self.logger.info("log level back to the agent's own", extra={"was": self.active.level})
        else:
            if self.active is None:
                self.own_level = self.logger.level
                self.logger.addHandler(self.handler)
            self.logger.setLevel(LEVELS.get(wanted.level, logging.DEBUG))
            self.logger.info("log level raised from the fleet repo",
                             extra={"level": wanted.level, "until": wanted.until})  # fmt: skip
        self.active = wanted
        return wanted is not None

    def take(self) -> list[dict]:
        """The oldest lines not yet uploaded (at most ``BATCH``), out of the buffer."""
        with self.handler.guard:
            count = min(BATCH, len(self.handler.lines))
            return [self.handler.lines.popleft() for _ in range(count)]

    def put_back(self, lines: list[dict]) -> None:
        """Lines an upload could not deliver, back in front (the oldest are dropped past ``CAPACITY``)."""
        with self.handler.guard:
            room = CAPACITY - len(self.handler.lines)
            self.handler.lines.extendleft(reversed(lines[-room:] if room > 0 else []))


def upload_logs(verbosity: Verbosity, client) -> int:
    """Hand the recent lines to the device API (``client.upload_logs``); lines it could not take go back. How
    many went."""
    lines = verbosity.take()
    if not lines:
        return 0
    try:
        client.upload_logs(lines)
    except Exception as exc:  # unreachable, or refused: never worth a cycle of the agent
        if verbosity.active is not None:  # still asked for: tried again after the next cycle
            verbosity.put_back(lines)
        logging.getLogger("edge_reconciler.agent").warning("log lines not uploaded", extra={"error": str(exc)})
        return 0
    return len(lines)
