"""``python -m reconciler.federated.node``: ``flower-supernode`` with its waits shortened.

flwr 1.42 waits a fixed 3 s between empty pulls and 0.5 s for replies (``flwr.supernode.start_client_internal``),
and sends a heartbeat every 30 s, so a dead node is noticed only after 60 s (two heartbeats). On a fleet device
those defaults cost minutes per training; here ``EDGE_TRAINING_POLL_SECONDS`` caps every wait of that loop and
``EDGE_TRAINING_HEARTBEAT_SECONDS`` sets the heartbeat (the SuperLink accepts 10 to 1,800 s). Neither is a flag of
Flower's, so both are set on its modules before its command line runs.
"""

from __future__ import annotations

import os
import sys
import time
import types


class _ShortWaits(types.ModuleType):
    """The ``time`` module as the SuperNode's loop sees it: every sleep capped."""

    def __init__(self, cap: float) -> None:
        super().__init__("time")
        self.cap = cap

    def __getattr__(self, name: str):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))


def main() -> int:
    import flwr.supercore.heartbeat as heartbeat
    import flwr.supernode.fleet_http_connection as connection
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli.flower_supernode import flower_supernode

    loop.time = _ShortWaits(float(os.environ.get("EDGE_TRAINING_POLL_SECONDS", "0.2")))
    beat = min(max(float(os.environ.get("EDGE_TRAINING_HEARTBEAT_SECONDS", "10")), 10.0), 1800.0)
    connection.HEARTBEAT_DEFAULT_INTERVAL = beat
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = beat
    sys.argv[0] = "flower-supernode"
    return flower_supernode() or 0


if __name__ == "__main__":
    sys.exit(main())
