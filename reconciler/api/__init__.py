"""The fleet spec: pydantic models of every document kind, the loader, and its errors.

Pure (no I/O): bytes in, validated models or :class:`SpecErrors` out. Everything else in the
reconciler reads fleet repos through :func:`load_fleet`.
"""

from .device import DeviceGroup, DeviceProfile
from .document import API_VERSION, Document
from .errors import SpecError, SpecErrors
from .fleet import Fleet
from .kinds import KINDS
from .loader import FleetTree, SourceFile, load_fleet
from .model import Model
from .rollout import Rollout
from .source import Limits

__all__ = [
    "API_VERSION",
    "KINDS",
    "DeviceGroup",
    "DeviceProfile",
    "Document",
    "Fleet",
    "FleetTree",
    "Limits",
    "Model",
    "Rollout",
    "SourceFile",
    "SpecError",
    "SpecErrors",
    "load_fleet",
]
