"""What PyPI's answers can go wrong with: one error root, `UpstreamError`, and its kinds.

The client (``upstream.client``), the page checks (``upstream.pages``) and the
sync's plan all raise or catch these; keeping them apart from the client lets
code that only judges pages (the writer, the plan) name them without importing
the HTTP machinery. `Retryable` kinds carry how long to wait (``http.retry``).
"""

from __future__ import annotations

from pypi_index_mirror.http.retry import Retryable
from pypi_index_mirror.ops.cli import ToolError


class UpstreamError(ToolError):
    """PyPI answered something this tool cannot use; the message says what."""


class Transient(UpstreamError, Retryable):
    """A failure worth retrying (connection, 5xx, 429, rate-limit fault)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        Retryable.__init__(self, message, retry_after)


class XmlRpcFault(UpstreamError):
    def __init__(self, method: str, code: int, text: str) -> None:
        super().__init__(f"PyPI XML-RPC {method} failed: fault {code}: {text[:200]}")
        self.method, self.code, self.text = method, code, text


class XmlRpcUnavailable(UpstreamError):
    """The index no longer offers XML-RPC (or this method): follow it through /simple/ instead."""

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(f"PyPI XML-RPC {method} is unavailable ({reason})")
        self.method, self.reason = method, reason


class NotASimplePage(UpstreamError):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: not a simple page ({reason}); not mirrored")
        self.name, self.reason = name, reason


class StalePage(UpstreamError, Retryable):
    """A CDN served a page older than the changelog said: asking again later may help."""

    def __init__(self, name: str, expected: int, got: int) -> None:
        Retryable.__init__(
            self, f"{name}: page serial {got} is older than changelog serial {expected}"
        )
        self.name, self.expected, self.got = name, expected, got


class MissingPage(UpstreamError, Retryable):
    """A 404 for a project the changelog says exists: a CDN not caught up, probably."""

    def __init__(self, name: str, serial: int) -> None:
        Retryable.__init__(
            self,
            f"{name}: page answers 404 although changelog serial {serial} says the project "
            "exists (a CDN not caught up?)",
        )
        self.name, self.serial = name, serial


class UntrustedListing(UpstreamError):
    """A project listing too empty or too small to be the index's (a stale cache): refused
    before anything is changed (see `sync.plan.listing_refusal`)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(
            f"PyPI's {source} {reason}: a stale cache, not the index; nothing was changed. "
            "Run again later (PyPI caches it up to an hour), or with --trust-listing if the "
            "index really holds so few"
        )
        self.source, self.reason = source, reason


class ChangelogError(UpstreamError):
    """The changelog contradicts itself; applying it could lose changes."""
