"""A person's rollout actions as commits: set an annotation on a Rollout document and commit it.

Who calls it: ``edgectl rollout pause|resume|promote|abort|retry``. The change is made to the file in a
working checkout of the fleet repo, as a person would, so that the history explains every change of the
fleet, reviews and branch protection apply, and the controller reads it like any other commit.

The edit is textual and touches only the ``metadata.annotations`` of the one document: comments, key order
and the other documents of the file stay as they were. Flow-style metadata (``metadata: {name: x}``) is
rewritten in block style.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pygit2
import yaml

from .source import PermanentGitError


@dataclass(frozen=True)
class Edited:
    path: str
    commit: str
    value: str | None


def find_rollout(root: Path, name: str) -> tuple[Path, int]:
    """The file holding Rollout ``name`` and the document's index in it."""
    for path in sorted(root.rglob("*.y*ml")):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or path.parts[-2:-1] == ("status",):
            continue
        try:
            documents = list(yaml.safe_load_all(path.read_text()))
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            continue
        for index, doc in enumerate(documents):
            if (
                isinstance(doc, dict)
                and doc.get("kind") == "Rollout"
                and (doc.get("metadata") or {}).get("name") == name
            ):
                return path, index
    raise PermanentGitError(f"no Rollout named {name} under {root}")


def current_annotation(root: Path, name: str, key: str) -> str | None:
    path, index = find_rollout(root, name)
    doc = list(yaml.safe_load_all(path.read_text()))[index]
    return ((doc.get("metadata") or {}).get("annotations") or {}).get(key)


def set_annotation(text: str, index: int, key: str, value: str | None) -> str:
    """``text`` with annotation ``key`` of document ``index`` set to ``value`` (None removes it)."""
    documents = re.split(r"(?m)^---[ \t]*\n", text)
    # Text before a first "---" that holds only comments is not a document of its own.
    head = [line for line in documents[0].split("\n") if line.strip() and not line.lstrip().startswith("#")]
    offset = 1 if len(documents) > 1 and not head else 0
    doc = documents[index + offset]
    lines = doc.split("\n")
    meta = next((i for i, line in enumerate(lines) if re.match(r"^metadata:\s*(#.*)?$", line)), None)
    if meta is None:
        flow = next((i for i, line in enumerate(lines) if line.startswith("metadata:")), None)
        if flow is None:
            raise PermanentGitError("the Rollout document has no metadata")
        body = yaml.safe_load(lines[flow][len("metadata:") :]) or {}
        block = yaml.safe_dump({"metadata": body}, default_flow_style=False, sort_keys=False).rstrip("\n").split("\n")
        lines[flow : flow + 1] = block
        meta = flow
    end = meta + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
        end += 1
    while end > meta + 1 and not lines[end - 1].strip():
        end -= 1
    indent = "  "
    for line in lines[meta + 1 : end]:
        if line.strip():
            indent = line[: len(line) - len(line.lstrip())]
            break
    ann = next((i for i in range(meta + 1, end) if lines[i] == f"{indent}annotations:"), None)
    entry = f"{indent * 2}{key}: {_quoted(value)}" if value is not None else None
    if ann is None:
        if entry is not None:
            lines[end:end] = [f"{indent}annotations:", entry]
    else:
        stop = ann + 1
        while stop < end and lines[stop].startswith(indent * 2):
            stop += 1
        existing = next((i for i in range(ann + 1, stop) if lines[i].strip().startswith(f"{key}:")), None)
        if existing is not None:
            if entry is None:
                del lines[existing]
            else:
                lines[existing] = entry
        elif entry is not None:
            lines[stop:stop] = [entry]
        if entry is None and existing is not None and stop - 1 == ann + 1:
            del lines[ann]  # the last annotation went: drop the empty mapping
    documents[index + offset] = "\n".join(lines)
    return "---\n".join(documents)


def add_model_version(text: str, path: str, model: str, entry: dict) -> str:
    """``text`` (a fleet file) with ``entry`` appended to Model ``model``'s ``spec.versions``, in the list's own
    indentation, after the last version's last line: comments, key order and the other documents stay as they were.
    The result is parsed again, and must hold the new version last."""
    from reconciler.api.source import Limits, parse_documents

    documents, errors = parse_documents(path, text.encode(), Limits())
    if errors:
        raise PermanentGitError(f"{path}: {errors[0].message}")
    found = next((d for d in documents if isinstance(d.data, dict) and d.data.get("kind") == "Model"
                  and (d.data.get("metadata") or {}).get("name") == model), None)  # fmt: skip
    versions = _mapping_value(found.node, "spec", "versions") if found is not None else None
    if not isinstance(versions, yaml.SequenceNode) or not versions.value or versions.flow_style:
        raise PermanentGitError(f"{path}: Model {model} has no block list of versions to add to")
    last = versions.value[-1]
    column = last.start_mark.column - 2  # the "- " of the item
    leaf = last
    while isinstance(leaf, yaml.MappingNode | yaml.SequenceNode) and not leaf.flow_style and leaf.value:
        leaf = leaf.value[-1][1] if isinstance(leaf, yaml.MappingNode) else leaf.value[-1]
    end = leaf.end_mark.line if leaf.end_mark.column > 0 else leaf.end_mark.line - 1
    lines = text.split("\n")
    block = yaml.safe_dump([entry], default_flow_style=False, sort_keys=False, width=1000).rstrip("\n").split("\n")
    lines[end + 1 : end + 1] = [" " * column + line for line in block]
    edited = "\n".join(lines)
    again, errors = parse_documents(path, edited.encode(), Limits())
    document = next((d for d in again if d.index == found.index), None) if not errors else None
    listed = ((document.data.get("spec") or {}).get("versions") or []) if document is not None else []
    if not listed or listed[-1] != entry:
        raise PermanentGitError(f"{path}: the new version of Model {model} could not be added in place")
    return edited


def _mapping_value(node: yaml.Node, *keys: str) -> yaml.Node | None:
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
        if node is None:
            return None
    return node


def commit_annotation(checkout: Path, name: str, key: str, value: str | None, message: str) -> Edited:
    """Set the annotation in the working tree and commit that one file on the current branch."""
    repo = _checkout(checkout)
    root = Path(repo.workdir)
    path, index = find_rollout(root, name)
    path.write_text(set_annotation(path.read_text(), index, key, value))
    relative = path.relative_to(root).as_posix()
    return Edited(relative, _commit(repo, {relative: True}, message), value)


def commit_files(checkout: Path, files: dict[str, bytes | None], message: str) -> str:
    """Write (None: remove) ``files``, relative to the checkout's root, and commit them on the current branch."""
    repo = _checkout(checkout)
    root = Path(repo.workdir)
    for relative, content in files.items():
        path = root / relative
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
    return _commit(repo, {relative: content is not None for relative, content in files.items()}, message)


def _checkout(checkout: Path) -> pygit2.Repository:
    try:
        repo = pygit2.Repository(str(checkout))
    except pygit2.GitError as exc:
        raise PermanentGitError(f"{checkout} is not a Git checkout: {exc}") from exc
    if repo.is_bare:
        raise PermanentGitError(f"{checkout} is a bare repository: commit from a checkout")
    return repo


def _commit(repo: pygit2.Repository, paths: dict[str, bool], message: str) -> str:
    """Stage ``paths`` (True: add, False: remove) and commit them on the current branch."""
    repo.index.read()
    for relative, present in paths.items():
        if present:
            repo.index.add(relative)
        elif relative in repo.index:
            repo.index.remove(relative)
    repo.index.write()
    tree = repo.index.write_tree()
    try:
        author = repo.default_signature
    except (KeyError, pygit2.GitError):
        author = pygit2.Signature("edgectl", "edgectl@localhost")
    parents = [] if repo.head_is_unborn else [repo.head.target]
    return str(repo.create_commit("HEAD", author, author, message, tree, parents))


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
