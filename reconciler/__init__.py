"""edge-reconciler: declarative GitOps delivery of machine-learning models to edge device fleets."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _installed


def release() -> str:
    """This installation's version (what pyproject.toml says, as installed); ``unknown`` from a bare checkout."""
    try:
        return _installed("edge-reconciler")
    except PackageNotFoundError:
        return "unknown"
