"""What RSTUF is sent: `Artifact` records, checked before they leave, and the request bodies.

RSTUF validates neither hash names, nor values, nor lengths, and one bad row
can break publishing for a whole hash bin, so every artifact and path is
checked here first (`validate_artifacts`, `validate_paths`); the bodies follow
repository-service-tuf-api's ``AddPayload`` and ``DeletePayload``. Pure: the
client sends what these build.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pypi_index_mirror.rstuf.errors import InvalidArtifact

# Hash names TUF clients (python-tuf, securesystemslib) accept, and the number
# of lowercase hex digits each digest has.
HASH_HEX_LENGTHS: Mapping[str, int] = {"blake2b-256": 64, "sha256": 64, "sha512": 128}


@dataclass(frozen=True)
class Artifact:
    """One TUF target: a path relative to the served directory and its exact bytes' facts."""

    path: str  # e.g. "simple/numpy/index.html" or "index.html"
    length: int  # bytes
    hashes: dict[str, str]  # {"blake2b-256": "<64 lowercase hex>"}
    custom: dict[str, Any] | None = None


_HEX = {n: re.compile(rf"[0-9a-f]{{{n}}}") for n in set(HASH_HEX_LENGTHS.values())}


def path_problem(path: object) -> str | None:
    """Return why `path` cannot be a TUF target path, or None when it can.

    TUF clients look targets up byte for byte and mirrors turn them into file
    names, so only one spelling of each relative POSIX path is allowed.
    """
    if not isinstance(path, str):
        return f"path must be a string, not {type(path).__name__}"
    if not path:
        return "path is empty"
    if path.startswith("/"):
        return "path must be relative (no leading '/')"
    if "\\" in path:
        return "path contains a backslash"
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in path):
        return "path contains a control character or a lone surrogate"
    segments = path.split("/")
    if "" in segments:
        return "path has an empty segment ('//' or a trailing '/')"
    if ".." in segments or "." in segments:
        return "path has a '.' or '..' segment"
    return None


def artifact_problem(artifact: Artifact) -> str | None:
    """Return why RSTUF must not be sent `artifact`, or None when it is fine."""
    problem = path_problem(artifact.path)
    if problem:
        return problem
    length = artifact.length
    if type(length) is not int or length < 0:  # bool is an int subclass: refuse it too
        return f"length must be an integer >= 0, not {length!r}"
    if not isinstance(artifact.hashes, Mapping) or not artifact.hashes:
        return "at least one hash is required"
    for name, value in artifact.hashes.items():
        digits = HASH_HEX_LENGTHS.get(name)
        if digits is None:
            allowed = ", ".join(HASH_HEX_LENGTHS)
            return f"hash name {name!r} is not one TUF clients accept ({allowed})"
        if not isinstance(value, str) or not _HEX[digits].fullmatch(value):
            return f"{name} must be {digits} lowercase hex digits, not {value!r}"
    if artifact.custom is not None and not isinstance(artifact.custom, dict):
        return f"custom must be a dict or None, not {type(artifact.custom).__name__}"
    return None


def _refuse_duplicates(paths: Sequence[str]) -> None:
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise InvalidArtifact(path, "listed twice in one request")
        seen.add(path)


def validate_artifacts(artifacts: Sequence[Artifact]) -> None:
    """Raise ValueError for an empty list, InvalidArtifact for the first bad artifact."""
    if not artifacts:
        raise ValueError("no artifacts to add")
    for artifact in artifacts:
        if not isinstance(artifact, Artifact):
            raise InvalidArtifact(artifact, f"not an Artifact but {type(artifact).__name__}")
        problem = artifact_problem(artifact)
        if problem:
            raise InvalidArtifact(artifact.path, problem)
    _refuse_duplicates([artifact.path for artifact in artifacts])


def validate_paths(paths: Sequence[str]) -> None:
    """Raise ValueError for an empty list, InvalidArtifact for the first bad path."""
    if isinstance(paths, str):  # a lone string is a sequence of one-letter paths
        raise TypeError("paths must be a sequence of strings, not one string")
    if not paths:
        raise ValueError("no artifacts to remove")
    for path in paths:
        problem = path_problem(path)
        if problem:
            raise InvalidArtifact(path, problem)
    _refuse_duplicates(paths)


def artifact_entry(artifact: Artifact) -> dict[str, Any]:
    """The JSON object RSTUF's ``Artifact`` model reads: path plus info."""
    info: dict[str, Any] = {"length": artifact.length, "hashes": dict(artifact.hashes)}
    if artifact.custom is not None:
        info["custom"] = artifact.custom
    return {"path": artifact.path, "info": info}


def add_body(artifacts: Sequence[Artifact], publish: bool) -> dict[str, Any]:
    """Body of ``POST /api/v1/artifacts/`` (RSTUF's ``AddPayload``)."""
    return {
        "artifacts": [artifact_entry(artifact) for artifact in artifacts],
        "add_task_id_to_custom": False,
        "publish_artifacts": bool(publish),
    }


def delete_body(paths: Sequence[str], publish: bool) -> dict[str, Any]:
    """Body of ``POST /api/v1/artifacts/delete`` (RSTUF's ``DeletePayload``)."""
    return {"artifacts": list(paths), "publish_artifacts": bool(publish)}
