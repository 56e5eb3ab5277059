"""The compact listing of a full sync: what a dict of PendingProjects would say, in sorted order."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pypi_index_mirror.mirror.state import PendingProject
from pypi_index_mirror.mirror.store import normalize_name
from pypi_index_mirror.upstream import changelog
from tests.fake_pypi import synthetic_name


@pytest.fixture(autouse=True)
def small_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of 7 records, so a few hundred projects are merged from many sorted runs."""
    monkeypatch.setattr(changelog.Listing, "RUN", 7)


def reference(pairs: list[tuple[str, int]]) -> dict[str, PendingProject]:
    """What the listing means: per normalized name, the newest serial and its display name."""
    result: dict[str, PendingProject] = {}
    for display, serial in pairs:
        name = normalize_name(display)
        if name not in result or serial >= result[name].serial:
            result[name] = PendingProject(display, serial, expect_page=True)
    return dict(sorted(result.items()))


def listed(pairs: list[tuple[str, int]], spill_dir: Path | None = None) -> changelog.Listing:
    listing = changelog.Listing(spill_dir)
    for display, serial in pairs:
        changelog.add_listed(listing, display, serial)
    return listing


def synthetic_pairs(count: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    pairs = [(synthetic_name(rng, index), 100 + index) for index in range(count)]
    # the same project again: a retried listing, another spelling at another serial
    for display, serial in rng.sample(pairs, 40):
        pairs.append((display, serial))
        pairs.append((display.upper().replace("-", "_"), serial + rng.choice([-50, 50])))
    rng.shuffle(pairs)
    return pairs


@pytest.mark.parametrize("spill", [False, True], ids=["runs in memory", "runs in temp files"])
def test_listing_holds_what_a_dict_would_in_sorted_order(tmp_path: Path, spill: bool) -> None:
    pairs = synthetic_pairs(300, seed=1)
    listing, expected = listed(pairs, tmp_path if spill else None), reference(pairs)
    assert len(listing) == len(expected)
    assert list(listing) == list(expected)
    assert dict(listing.items()) == expected
    assert all(listing[name] == item for name, item in expected.items())
    assert listing.max_serial(default=0) == max(item.serial for item in expected.values())
    assert list(tmp_path.iterdir()) == [], "the runs' temp files have no name to leave behind"


def test_lookups_of_unlisted_names() -> None:
    listing = listed([("Zope.Interface", 3), ("numpy", 5)])
    assert "zope-interface" in listing and "numpy" in listing
    for name in ("zope", "zope-interface-x", "a", "zzz", "", "nümpy", "Zope.Interface"):
        assert name not in listing
        assert listing.index(name) == -1
        with pytest.raises(KeyError):
            listing[name]
    assert changelog.Listing().max_serial(default=42) == 42
    assert list(changelog.Listing()) == []


def test_adding_after_a_read_keeps_everything() -> None:
    first, second = synthetic_pairs(50, seed=2), synthetic_pairs(50, seed=3)
    listing = listed(first)
    assert len(listing) == len(reference(first))
    for display, serial in second:
        changelog.add_listed(listing, display, serial)
    assert dict(listing.items()) == reference(first + second)


def test_selection_excludes_merges_and_counts() -> None:
    listing = listed([("a", 1), ("B", 2), ("c", 3), ("d", 4)])
    selection = changelog.Selection(listing)
    selection.exclude(listing.index("a"))
    selection.merge("gone", PendingProject("gone", 0))
    selection.merge("c", PendingProject("c", 9))  # pending at a newer serial: it wins
    selection.merge("d", PendingProject("d", 1))  # pending at an older serial: the listing wins
    expected = {
        "b": PendingProject("B", 2, expect_page=True),
        "d": PendingProject("d", 4, expect_page=True),
        "gone": PendingProject("gone", 0),
        "c": PendingProject("c", 9),
    }
    assert dict(selection.items()) == expected
    assert len(selection) == len(expected)
    assert sorted(selection) == sorted(expected)
    assert "a" not in selection and selection["c"].serial == 9


def test_a_serial_beyond_any_journal_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listing = listed([("huge", 1 << 70), ("fine", 7)])
    assert list(listing) == ["fine"]
    assert "is not a serial" in caplog.text
