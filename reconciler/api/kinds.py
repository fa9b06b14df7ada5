"""The registry of document kinds, in the order people usually read a fleet repo.

Pure (no I/O). Adding a kind means adding it here; the loader, the schema export and the CLI's
counts all read this one table.
"""

from __future__ import annotations

from .debug import DebugSession
from .device import DeviceGroup, DeviceProfile
from .document import Document
from .fleet import Fleet
from .model import Model
from .retraining import RetrainingRequest
from .rollout import Rollout
from .training import FederatedTraining

KINDS: dict[str, type[Document]] = {cls.KIND: cls for cls in (Fleet, DeviceProfile, DeviceGroup, Model, Rollout,
                                                           RetrainingRequest, DebugSession,
                                                           FederatedTraining)}  # fmt: skip
