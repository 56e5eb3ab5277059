"""One project's fetch in every mirrored form, as steps the fetch engine takes (``fetch_loop``).

The engine makes the requests; `PageSteps` says what to ask next, judges
each answer (``PypiClient.read_page``, the same check for every page), asks
for a pause when a request failed in a way another may not (a connection
failure, a 5xx or 429: the form is asked again; a page older than the
changelog, or forms that disagree: the forms behind are, in a new round) and
says when the project is done. The decisions on what the pages show are the
plan's (``sync.plan.forms_answer``); the pauses and attempt counts are the one
retry policy's (``http.retry``), as they were when a thread slept them.

Every answer feeds the circuit breaker; once it trips, or a signal arrives,
the run's `Halt` is set and the engine stops asking (`halted`).
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

from pypi_index_mirror.http.retry import pause_before_retry
from pypi_index_mirror.mirror.formats import JSON, PageFormat
from pypi_index_mirror.mirror.safety import CircuitBreaker, Halt
from pypi_index_mirror.mirror.state import PendingProject
from pypi_index_mirror.mirror.writer import MirrorWriter
from pypi_index_mirror.ops.cli import stop_requested
from pypi_index_mirror.sync.fetch_loop import Pause
from pypi_index_mirror.sync.plan import forms_answer
from pypi_index_mirror.upstream.client import PypiClient, conditional_headers, page_request
from pypi_index_mirror.upstream.errors import MissingPage, StalePage, Transient, UpstreamError
from pypi_index_mirror.upstream.pages import FetchedPage
from pypi_index_mirror.upstream.transport import PageAnswer, PageTransportError

log = logging.getLogger(__name__)
# a page's retries are reported where they always were: beside the client's other retries
client_log = logging.getLogger(PypiClient.__module__)


class NotFetched:
    """The result of a project that fetching stopped before (circuit breaker, signal)."""


NOT_FETCHED = NotFetched()


@dataclass(slots=True)
class ProjectPages:
    """A project's page in each mirrored form as fetched, and as the mirror held it before."""

    pages: list[FetchedPage]
    olds: list[bytes | None]


@dataclass(slots=True)
class ProjectFetch:
    """One project's fetch in every form as it stands between two steps.

    `todo` not empty: the round's requests still to make (the first round asks
    every form); empty: the round is judged, and when the answers did not
    agree the next round asks for the forms `behind`.
    """

    name: str
    item: PendingProject
    olds: list[bytes | None]  # the pages on disk, per form
    pages: list[FetchedPage | None]  # the newest answer per form
    todo: list[int]  # the forms this round still asks for (the first: every form)
    expected: int  # the serial they must reach
    behind: tuple[int, ...] = ()  # the forms the next round asks for
    tries: int = 0  # failed attempts of the request `todo[0]` (its retries so far)
    rounds: int = 0  # rounds that did not agree (their retries so far)


@dataclass(slots=True)
class Fetched:
    """What the steps made of one project (see `PageSteps.settle_pages`)."""

    name: str
    item: PendingProject
    # None: new pages written at once (`listed` and `serial` say what they showed)
    pages: ProjectPages | UpstreamError | NotFetched | None
    listed: bool = False
    serial: int = 0


class PageSteps:
    """The rules of every project's fetch in one `Refresher.refresh` (``fetch_loop.ProjectSteps``).

    `record_changes`: the run records its changes for RSTUF (so every page
    goes through the consumer's batch); `read_old`: the mirror may hold pages
    of these projects (each is read at `begin`, so the consumer compares bytes
    and a page equal to the mirror's is not parsed again).
    """

    def __init__(
        self,
        pypi: PypiClient,
        writer: MirrorWriter,
        forms: tuple[PageFormat, ...],
        breaker: CircuitBreaker,
        halt: Halt,
        record_changes: bool,
        read_old: bool,
        dry_run: bool = False,
        revalidating: bool = False,
    ) -> None:
        self.pypi, self.writer, self.forms = pypi, writer, forms
        self.breaker, self.halt = breaker, halt
        self.record_changes, self.read_old, self.dry_run = record_changes, read_old, dry_run
        # revalidation: each GET is conditional on the page held (a 304 when unchanged)
        self.revalidating = revalidating
        self.policy = pypi.retry_policy
        self.json_form = [form is JSON for form in forms]

    # the engine's side (fetch_loop.ProjectSteps)

    def begin(self, pair: tuple[str, PendingProject]) -> ProjectFetch:
        name, item = pair
        forms = self.forms
        olds: list[bytes | None] = [None] * len(forms)
        if self.read_old:  # read here: the consumer then compares bytes without waiting on I/O
            olds = [self.writer.read_page(name, form.basename) for form in forms]
        return ProjectFetch(
            name, item, olds, [None] * len(forms), list(range(len(forms))), item.serial
        )

    def item_of(self, fetch: ProjectFetch) -> tuple[str, PendingProject]:
        return fetch.name, fetch.item

    def unfetched(self, pair: tuple[str, PendingProject]) -> Fetched:
        return Fetched(pair[0], pair[1], NOT_FETCHED)

    def halted(self) -> bool:
        """Whether the run stopped fetching; a signal held back (``deferred_stops``) halts it."""
        signum = stop_requested()
        if signum is not None:
            self.halt.set(f"stopped by {signal.Signals(signum).name}")
        return self.halt.is_set

    def step(
        self, fetch: ProjectFetch, outcome: PageAnswer | PageTransportError | None
    ) -> tuple[str, str, tuple[str, ...]] | Pause | Fetched:
        """After `outcome` (None: nothing asked yet, or a pause ended), the next request,
        a pause before a retry, or the project's result."""
        if outcome is not None:
            index = fetch.todo[0]
            try:
                fetch.pages[index] = self.judge(index, fetch.name, outcome, fetch.olds[index])
            except Transient as exc:  # this form's request again, after a pause
                delay = pause_before_retry(
                    exc, fetch.tries, self.policy, fetch.name, client_log, logging.INFO
                )
                if delay is None:
                    attempts = self.policy.retries + 1
                    error = UpstreamError(
                        f"{fetch.name}: giving up after {attempts} attempts: {exc}"
                    )
                    error.__cause__ = exc
                    return Fetched(fetch.name, fetch.item, error)
                fetch.tries += 1
                return Pause(delay)
            except UpstreamError as exc:
                return Fetched(fetch.name, fetch.item, exc)
            fetch.todo.pop(0)
            fetch.tries = 0
        if fetch.todo:
            if self.halt.is_set:
                return Fetched(fetch.name, fetch.item, NOT_FETCHED)
            self.pypi.count_request()
            index = fetch.todo[0]
            held = fetch.olds[index] if self.revalidating else None
            path, accept = page_request(fetch.name, self.json_form[index])
            return path, accept, conditional_headers(held) if held is not None else ()
        try:
            pages = self.end_round(fetch)
        except (StalePage, MissingPage) as exc:  # the forms behind again, after a pause
            delay = pause_before_retry(
                exc, fetch.rounds, self.policy, fetch.name, log, logging.DEBUG
            )
            if delay is None:
                return Fetched(fetch.name, fetch.item, exc)
            fetch.rounds += 1
            fetch.todo = list(fetch.behind)
            return Pause(delay)
        return self.settle_pages(fetch.name, fetch.item, pages)

    # the rules

    def end_round(self, fetch: ProjectFetch) -> ProjectPages:
        """The pages, when a round's answers show the project at one moment and new enough;
        otherwise `fetch` says which forms are behind, and the reason is raised."""
        got = [page for page in fetch.pages if page is not None]
        item = fetch.item
        answer = forms_answer(
            got, PendingProject(item.display_name, fetch.expected, item.expect_page)
        )
        if answer.problem is None:
            self.breaker.record(True)
            return ProjectPages(got, fetch.olds)
        fetch.behind, fetch.expected = answer.behind, answer.expected
        self.count_failure(str(answer.problem))
        raise answer.problem

    def judge(
        self, index: int, name: str, outcome: PageAnswer | PageTransportError, known: bytes | None
    ) -> FetchedPage:
        """What one request for the page in form `index` brought; failures feed the breaker."""
        try:
            return self.pypi.read_page(name, outcome, known, self.json_form[index])
        except UpstreamError as exc:
            self.count_failure(str(exc))
            raise

    def count_failure(self, what: str) -> None:
        if self.breaker.record(False):
            self.halt.set(
                f"PyPI is failing as a whole: {self.breaker.limit} page requests failed in "
                f"a row (the last: {what}; --failure-limit)"
            )

    def settle_pages(self, name: str, item: PendingProject, pages: ProjectPages) -> Fetched:
        """A project's fetched pages as a result, written first if that is safe here.

        Safe are new pages (nothing on disk in any form) when no change is
        recorded (a first sync): the consumer's batch (`Refresher.apply_batch`)
        would neither save an intent nor retire a copy for them, and writing
        them now frees their bodies at once. Everything else goes through the
        batch. Only one fetch of `name` is in progress, and a page is written
        the same way wherever that happens.
        """
        direct = not self.record_changes and not self.dry_run
        direct = direct and all(page.body is not None for page in pages.pages)
        if not (direct and all(old is None for old in pages.olds)):
            return Fetched(name, item, pages)
        for form, page in zip(self.forms, pages.pages, strict=True):
            assert page.body is not None
            self.writer.store_new(name, page.body, form.basename)
        primary = pages.pages[0]
        assert primary.facts is not None
        return Fetched(name, item, None, primary.facts.listed, primary.serial or 0)  # bodies freed
