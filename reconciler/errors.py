"""What a failure asks of whoever runs the loop: wait and try again, or stop and ask a person.

Who uses it: every package that talks to something outside the process (Git, Kubernetes, the device API,
the disk of a device) raises one of the two kinds below; the controller and the agent loops catch the
kinds, never the packages' own classes, so a new failure mode needs no change to any loop. Pure: no I/O,
standard library only, below every layer.

    EdgeReconcilerError
    ├── TemporaryError       retry after ``retry_after`` seconds; nothing for a person to do
    │   ├── TemporaryGitError         (gitops) network, timeout, 5xx, the branch moved during a push
    │   ├── TemporaryClusterError     (cluster) unreachable API server, 409, 429, 5xx, a locked database
    │   ├── FetchError                (signing, also a TrustError) TUF metadata or a file not downloaded
    │   └── DownloadError             (agent) an artifact file not downloaded, or not what was signed
    └── PermanentError       needs a person: configuration, credentials, a server's policy refused it
        ├── PermanentGitError         authentication, no such repository or branch, a non-bare remote
        ├── PermanentClusterError     no credentials, 4xx (RBAC, validation), a missing CRD
        └── KeyFileError              (signing, also a TrustError) a key file that cannot be used

``GitError`` and ``ClusterError`` are the packages' own bases (``except GitError`` catches both kinds of
that package); only their Temporary/Permanent subclasses are raised. Refusals of untrusted data
(``signing.RefusedError``) are neither kind on purpose: a refusal is a verdict on the data, reported in
status, and retrying the same data gives the same verdict.
"""

from __future__ import annotations

__all__ = ["DEFAULT_RETRY_AFTER", "EdgeReconcilerError", "PermanentError", "TemporaryError"]

DEFAULT_RETRY_AFTER = 30.0
"""Seconds: long enough not to hammer a server that is restarting, short against a controller's interval."""


class EdgeReconcilerError(Exception):
    """Base of the failures this project raises on purpose (programming errors stay builtin exceptions)."""


class TemporaryError(EdgeReconcilerError):
    """Retrying later may succeed without anyone changing anything. ``retry_after``: the least wait, seconds."""

    def __init__(self, *args: object, retry_after: float = DEFAULT_RETRY_AFTER) -> None:
        super().__init__(*args)
        self.retry_after = max(0.0, float(retry_after))


class PermanentError(EdgeReconcilerError):
    """Retrying gives the same answer until a person changes configuration, credentials or a server policy."""
