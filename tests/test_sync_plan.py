"""sync_plan: what a run fetches and rewrites, decided from what it read: no server, no disk.

Each case states what was read (the listing, the pages on disk and their serial
trailers, the pending projects, a fetched page) and asserts the decision.
"""

from __future__ import annotations

import pytest

from pypi_index_mirror.mirror.state import PendingProject
from pypi_index_mirror.sync.plan import full_sync_fetches, is_current, root_changes, stale_answer
from pypi_index_mirror.upstream.changelog import Listing
from pypi_index_mirror.upstream.errors import MissingPage, StalePage
from pypi_index_mirror.upstream.pages import FetchedPage, PageFacts


def listing(**serials: int) -> Listing:
    wanted = Listing()
    for name, serial in serials.items():
        wanted.add(name.replace("_", "-"), name.replace("_", "-"), serial)
    return wanted


# --- which listed projects a full sync may skip ------------------------------------


@pytest.mark.parametrize(
    ("on_disk", "current"), [(None, False), (99, False), (100, True), (101, True)]
)
def test_a_page_is_current_once_its_trailer_reaches_the_listed_serial(on_disk, current):
    assert is_current(PendingProject("numpy", 100), on_disk) is current


def test_current_projects_are_on_disk_listed_not_pending_and_not_behind() -> None:
    wanted = listing(numpy=100, django=200, flask=300, requests=400)
    on_disk = {"numpy": 100, "django": 150, "flask": 300, "gone": 5}  # requests: no page
    local = [*on_disk, "requests"]
    pending = {"flask": PendingProject("flask", 300)}
    asked: list[str] = []

    def trailer(name: str, listed: PendingProject) -> int | None:
        assert listed == wanted[name]
        asked.append(name)
        return on_disk.get(name)

    fetches = full_sync_fetches(wanted, iter(local), trailer, pending)
    assert "numpy" not in fetches and fetches.excluded == 1 and fetches.local_seen == 5
    assert sorted(asked) == ["django", "numpy", "requests"], "only listed, non-pending pages read"


def test_nothing_on_disk_reads_nothing() -> None:
    fetches = full_sync_fetches(listing(numpy=1), iter([]), pytest.fail, {})
    assert fetches.excluded == 0 and fetches.local_seen == 0 and list(fetches) == ["numpy"]


def test_a_full_check_fetches_every_listed_project() -> None:
    wanted = listing(numpy=100, django=200)
    fetches = full_sync_fetches(wanted, iter(["numpy", "django", "old"]), None, {})
    assert sorted(fetches) == ["django", "numpy", "old"] and fetches.excluded == 0


# --- what a full sync fetches --------------------------------------------------------


def test_a_first_sync_fetches_the_whole_listing() -> None:
    wanted = listing(numpy=1, django=2)
    assert dict(full_sync_fetches(wanted, iter([]), None, {}).items()) == dict(wanted.items())


def test_a_full_sync_skips_current_pages_and_lets_unlisted_ones_decide() -> None:
    wanted = listing(numpy=100, django=200)
    pending = {"flask": PendingProject("Flask", 300, expect_page=True)}
    trailers = {"numpy": 100, "django": 150}
    fetches = full_sync_fetches(
        wanted, iter(["numpy", "django", "old"]), lambda name, _: trailers.get(name), pending
    )
    assert dict(fetches.items()) == {
        "django": PendingProject("django", 200, expect_page=True),
        "old": PendingProject("old", 0),  # no longer listed: a 404 removes it
        "flask": PendingProject("Flask", 300, expect_page=True),
    }
    assert len(fetches) == 3


def test_a_pending_project_keeps_the_newer_of_its_two_serials() -> None:
    wanted = listing(numpy=100)
    newer = PendingProject("NumPy", 150, expect_page=True)
    assert full_sync_fetches(wanted, iter([]), None, {"numpy": newer})["numpy"] == newer
    older = PendingProject("NumPy", 50)
    assert full_sync_fetches(wanted, iter([]), None, {"numpy": older})["numpy"].serial == 100


# --- whether a fetched page is as new as the changelog says ------------------------

BODY = b"<!DOCTYPE html><html></html>"


def page(serial: int | None, body: bytes | None = BODY) -> FetchedPage:
    facts = PageFacts("active") if body is not None else None
    return FetchedPage("numpy", body, serial, facts)


def test_a_page_at_or_past_the_changelog_serial_will_do() -> None:
    assert stale_answer(page(7), PendingProject("numpy", 7)) is None
    assert stale_answer(page(8), PendingProject("numpy", 7, expect_page=True)) is None


def test_an_older_page_is_stale() -> None:
    problem = stale_answer(page(6), PendingProject("numpy", 7))
    assert isinstance(problem, StalePage)
    assert (problem.expected, problem.got) == (7, 6)


def test_a_404_is_the_answer_after_a_removal_and_missing_otherwise() -> None:
    assert stale_answer(page(None, body=None), PendingProject("numpy", 7)) is None
    problem = stale_answer(page(None, body=None), PendingProject("numpy", 7, expect_page=True))
    assert isinstance(problem, MissingPage) and problem.serial == 7


# --- what an update changes in the root index --------------------------------------

TO_FETCH = {
    "numpy": PendingProject("NumPy", 10),
    "gone": PendingProject("gone", 11),
    "failed": PendingProject("failed", 12),
}
FETCHED = {"numpy", "gone"}


def listed(name: str) -> bool:
    return name != "gone"


def test_the_root_stays_when_no_listing_or_identity_changed() -> None:
    assert root_changes(TO_FETCH, FETCHED, listed, set(), membership_changed=False) is None
    assert root_changes(TO_FETCH, FETCHED, listed, {"failed"}, membership_changed=False) is None


@pytest.mark.parametrize(
    ("identity_changed", "membership_changed"), [({"numpy"}, False), (set(), True)]
)
def test_a_membership_or_identity_change_rewrites_every_fetched_line(
    identity_changed: set[str], membership_changed: bool
) -> None:
    changes = root_changes(TO_FETCH, FETCHED, listed, identity_changed, membership_changed)
    assert changes == {"numpy": "NumPy", "gone": None}, "a failed fetch leaves its line alone"
