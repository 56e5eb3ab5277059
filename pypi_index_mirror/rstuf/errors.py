"""What can go wrong talking to RSTUF: `RstufError` and narrow kinds that carry the facts.

Each reads as one line telling the operator what to do (`str()`), naming the
call that failed. Apart from the client so that the outbox, which judges
tasks and decides what a failure means for delivery, names them without the
HTTP machinery; `one_line` shortens RSTUF's own words for these messages.
"""

from __future__ import annotations

DETAIL_CHARS = 400  # RSTUF's text is shown on one line, at most this long


def one_line(text: str, limit: int = DETAIL_CHARS) -> str:
    """`text` on one line, cut to `limit` characters (RSTUF's texts can be pages long)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RstufError(Exception):
    """Anything that went wrong talking to RSTUF; `str()` is one actionable line."""


class InvalidArtifact(RstufError, ValueError):
    """An artifact RSTUF would accept but TUF clients could not use; nothing was sent."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"refusing to send artifact {self.path!r} to RSTUF: {self.reason}"


class RstufUnreachable(RstufError):
    """No HTTP answer at all (connection refused or dropped, DNS, timeout), after retries."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"RSTUF at {self.url} did not answer ({self.reason}); "
            "check the RSTUF URL and that the RSTUF API is running"
        )


class RstufNotBootstrapped(RstufError):
    """RSTUF refuses artifacts until its repository has been bootstrapped."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return (
            f"RSTUF is not bootstrapped ({self.detail}); run the RSTUF bootstrap "
            "(rstuf admin ceremony / import-artifacts) first"
        )


class RstufHttpError(RstufError):
    """An HTTP error answer: its status, RSTUF's detail text and the call it answered."""

    def __init__(self, status: int, detail: str, url: str | None = None) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.url = url

    @property
    def where(self) -> str:
        return f" {self.url}" if self.url else ""


class RstufRefused(RstufHttpError):
    """A 4xx answer: RSTUF (or a proxy in front of it) refused this request as sent."""

    def __str__(self) -> str:
        advice = {
            401: "check the RSTUF token (RSTUF_API_TOKEN) or the proxy's credentials",
            403: "check the RSTUF token's scopes or the proxy's access rules",
            404: "check the RSTUF URL (it should be the API's base, without /api/v1)",
            422: "the request did not match RSTUF's API; report this with RSTUF's version",
            429: "RSTUF is rate limiting; run again later",
        }.get(self.status, "see RSTUF's detail above")
        return f"RSTUF refused{self.where} (HTTP {self.status}): {self.detail}; {advice}"


class RstufMisconfigured(RstufRefused):
    """A 401, a 403, or a 404 that is not RSTUF's "not bootstrapped" answer.

    None of these goes away by waiting: the token, the proxy's rules or the URL
    must change. A 404 without RSTUF's JSON detail is a route RSTUF does not
    have (FastAPI's ``{"detail": "Not Found"}``, a web server's page): the URL
    does not point at an RSTUF API, or carries ``/api/v1`` twice.
    """

    def __str__(self) -> str:
        if self.status == 404:
            return (
                f"the RSTUF URL is not an RSTUF API:{self.where} answered HTTP 404 "
                f"({self.detail}); check the RSTUF URL (--rstuf-url, RSTUF_API_URL): "
                "the API's base, without /api/v1"
            )
        return super().__str__()


class RstufServerError(RstufHttpError):
    """A 5xx answer that did not go away after the retries."""

    def __str__(self) -> str:
        return (
            f"RSTUF failed{self.where} (HTTP {self.status}): {self.detail}; "
            "check the RSTUF API and worker logs, then run again"
        )


class RstufBadResponse(RstufError):
    """An answer this client cannot use: not JSON, too large, no task id..."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"unexpected answer from RSTUF: {self.reason}; "
            "check that the URL points at an RSTUF API v1"
        )


class TaskFailed(RstufError):
    """An RSTUF task ended without applying its changes (or applied only part of them)."""

    def __init__(self, task_id: str, state: str, message: str) -> None:
        super().__init__(task_id, state, message)
        self.task_id = task_id
        self.state = state
        self.message = message

    def __str__(self) -> str:
        return (
            f"RSTUF task {self.task_id} ended {self.state}: {self.message}; "
            "check the RSTUF worker logs (the changes are sent again next run)"
        )
