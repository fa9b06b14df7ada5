"""Fetch a model version's source and check it against the digest pinned in the spec.

Who calls it: the pipeline, before anything reads the file. A repo path is resolved inside the fleet
checkout (never outside it); ``file://`` and ``https://`` URIs are copied into the build's work folder
with a size cap. The sha256 is checked before the file is handed on, so a swapped or truncated source
never reaches TensorFlow.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from reconciler.api.model import ModelSource
from reconciler.artifact.store import sha256_file

from .errors import SourceError

MAX_SOURCE_BYTES = 4 << 30


def fetch_source(source: ModelSource, repo_root: Path, workdir: Path) -> Path:
    """A local path to the verified source file."""
    if source.is_repo_path:
        root = repo_root.resolve()
        path = (root / source.uri).resolve()
        if not path.is_relative_to(root):
            raise SourceError(f"source {source.uri} points outside the fleet repo")
        if not path.is_file():
            raise SourceError(f"source {source.uri} does not exist in the fleet repo")
    else:
        path = _download(source.uri, workdir / ("source" + Path(urllib.parse.urlparse(source.uri).path).suffix))
    actual = sha256_file(path)
    if actual != source.sha256:
        raise SourceError(f"source {source.uri} has sha256 {actual}, but the spec pins {source.sha256}")
    return path


def _download(uri: str, target: Path) -> Path:
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme not in ("file", "https", "http"):
        raise SourceError(f"source {uri}: unsupported scheme {scheme!r} (use a repo path, file:// or https://)")
    try:
        with urllib.request.urlopen(uri, timeout=60) as response, target.open("wb") as out:
            copied = 0
            while chunk := response.read(1 << 20):
                copied += len(chunk)
                if copied > MAX_SOURCE_BYTES:
                    raise SourceError(f"source {uri} is larger than {MAX_SOURCE_BYTES} bytes")
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        raise SourceError(f"source {uri} could not be fetched: {exc}") from exc
    return target
