"""The metrics file: the status's figures in Prometheus's text exposition format.

``--metrics-file`` gets the figures status.json holds, in the format of
https://prometheus.io/docs/instrumenting/exposition_formats/, named as the
naming guide asks (https://prometheus.io/docs/practices/naming/), for
node_exporter's textfile collector. Apart from ``ops.status`` because it is a
second rendering of the same record with rules of its own (families, types,
escaping, no sample for an unknown figure); ``ops.recorder`` writes it.
"""

from __future__ import annotations

from collections.abc import Iterator

from pypi_index_mirror.ops.cli import VERSION
from pypi_index_mirror.ops.status import PAGE_COUNTS, Status

GAUGE, COUNTER = "gauge", "counter"
# Every metric family, without the pypi_mirror_ prefix: its type and help text.
FAMILIES: dict[str, tuple[str, str]] = {
    "info": (GAUGE, "The version of pypi-index-mirror that wrote these metrics."),
    "last_run_start_timestamp_seconds": (GAUGE, "When the last run started (Unix time)."),
    "last_run_end_timestamp_seconds": (GAUGE, "When the last run ended (Unix time)."),
    "last_run_duration_seconds": (GAUGE, "How long the last run took."),
    "last_run_exit_code": (GAUGE, "The last run's exit code (0 done, 75 partly done, 1 failed)."),
    "last_run_pages": (
        GAUGE,
        "Pages the last run added, updated, removed, found unchanged or failed to fetch.",
    ),
    "last_run_pypi_requests": (GAUGE, "Requests the last run made to PyPI."),
    "last_run_rstuf_artifacts_sent": (GAUGE, "Artifacts the last run sent to RSTUF."),
    "last_run_rstuf_artifacts_confirmed": (
        GAUGE,
        "Paths RSTUF confirmed in the last run, whichever run sent them.",
    ),
    "last_run_rstuf_deletes_not_found": (
        GAUGE,
        "Deletes RSTUF answered not_found_artifacts in the last run, for paths the mirror "
        "recorded as signed.",
    ),
    "last_success_timestamp_seconds": (
        GAUGE,
        "When the last run that completed (exit 0 or 75) ended (Unix time).",
    ),
    "runs_total": (COUNTER, "Runs recorded in the status file, by result."),
    "pages_total": (
        COUNTER,
        "Pages added, updated, removed, found unchanged or failed to fetch, over recorded runs.",
    ),
    "pypi_requests_total": (COUNTER, "Requests made to PyPI over recorded runs."),
    "rstuf_artifacts_sent_total": (COUNTER, "Artifacts sent to RSTUF over recorded runs."),
    "rstuf_artifacts_confirmed_total": (
        COUNTER,
        "Paths RSTUF confirmed over recorded runs.",
    ),
    "rstuf_deletes_not_found_total": (
        COUNTER,
        "Deletes RSTUF answered not_found_artifacts, for paths the mirror recorded as signed, "
        "over recorded runs.",
    ),
    "serial": (GAUGE, "The PyPI changelog serial the mirror has fully applied."),
    "upstream_serial": (GAUGE, "PyPI's last changelog serial, as last seen."),
    "upstream_serial_timestamp_seconds": (GAUGE, "When PyPI's last serial was seen (Unix time)."),
    "serial_lag": (GAUGE, "Changelog serials the mirror is behind PyPI, as last seen."),
    "in_step_timestamp_seconds": (
        GAUGE,
        "When the mirror was last seen holding PyPI's newest serial (Unix time): now minus "
        "this is the age of the newest serial it applied.",
    ),
    "pending_projects": (GAUGE, "Projects whose page failed or stayed stale, kept for next run."),
    "outbox_paths": (GAUGE, "Changed paths RSTUF has not confirmed yet."),
    "outbox_tasks": (GAUGE, "RSTUF tasks accepted but not yet seen to succeed."),
    "outbox_oldest_unsent_timestamp_seconds": (
        GAUGE,
        "Since when the oldest change RSTUF has not confirmed waits, at the latest "
        "(Unix time; no sample while the outbox is empty).",
    ),
    "retired_copies": (GAUGE, "Old hash-prefixed page copies still served in their grace."),
    "full_sync_in_progress": (GAUGE, "1 while a first sync or --full-check is unfinished."),
}
PREFIX = "pypi_mirror_"

Sample = tuple[str, dict[str, str], float | None]  # family, labels, value (None: unknown)


def metric_samples(status: Status) -> Iterator[Sample]:
    """Every figure of the status as a sample of one of `FAMILIES`."""
    yield "info", {"version": VERSION}, 1
    last = status.last_run
    if last is not None:
        yield "last_run_start_timestamp_seconds", {}, last.started
        yield "last_run_end_timestamp_seconds", {}, last.ended
        yield "last_run_duration_seconds", {}, last.duration
        yield "last_run_exit_code", {}, last.exit_code
        for name in PAGE_COUNTS:
            yield "last_run_pages", {"change": name}, last.counts.get(name)
        yield "last_run_pypi_requests", {}, last.counts.get("requests")
        yield "last_run_rstuf_artifacts_sent", {}, last.counts.get("rstuf_sent")
        yield "last_run_rstuf_artifacts_confirmed", {}, last.counts.get("rstuf_confirmed")
        yield "last_run_rstuf_deletes_not_found", {}, last.counts.get("rstuf_not_found")
    yield "last_success_timestamp_seconds", {}, status.last_success
    for result, count in sorted(status.runs.items()):
        yield "runs_total", {"result": result}, count
    for name in PAGE_COUNTS:
        yield "pages_total", {"change": name}, status.totals.get(name, 0)
    yield "pypi_requests_total", {}, status.totals.get("requests", 0)
    yield "rstuf_artifacts_sent_total", {}, status.totals.get("rstuf_sent", 0)
    yield "rstuf_artifacts_confirmed_total", {}, status.totals.get("rstuf_confirmed", 0)
    yield "rstuf_deletes_not_found_total", {}, status.totals.get("rstuf_not_found", 0)
    mirror = status.mirror
    yield "serial", {}, mirror.serial
    yield "upstream_serial", {}, mirror.upstream_serial
    yield "upstream_serial_timestamp_seconds", {}, mirror.upstream_seen
    yield "serial_lag", {}, mirror.lag
    yield "in_step_timestamp_seconds", {}, mirror.in_step_seen
    yield "pending_projects", {}, mirror.pending
    yield "outbox_paths", {}, mirror.outbox_paths
    yield "outbox_tasks", {}, mirror.outbox_tasks
    yield "outbox_oldest_unsent_timestamp_seconds", {}, mirror.oldest_unsent
    yield "retired_copies", {}, mirror.retired
    yield "full_sync_in_progress", {}, int(mirror.full_sync_in_progress)


def render_metrics(status: Status) -> str:
    """The text exposition format: per family ``# HELP``, ``# TYPE``, then its samples.

    A figure not known yet (no upstream serial seen, an empty outbox) has no
    sample, rather than a made-up 0 an alert would misread.
    """
    samples: dict[str, list[str]] = {}
    for family, labels, value in metric_samples(status):
        if value is not None:
            pairs = ",".join(f'{key}="{escape(text)}"' for key, text in labels.items())
            selector = f"{PREFIX}{family}{{{pairs}}}" if pairs else PREFIX + family
            samples.setdefault(family, []).append(f"{selector} {number_text(value)}")
    lines = []
    for family, family_samples in samples.items():
        kind, text = FAMILIES[family]
        lines += [f"# HELP {PREFIX}{family} {escape(text, quote=False)}"]
        lines += [f"# TYPE {PREFIX}{family} {kind}", *family_samples]
    return "".join(line + "\n" for line in lines)


def escape(text: str, quote: bool = True) -> str:
    """Escape a help text or (with `quote`) a label value as the format requires."""
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


def number_text(value: float) -> str:
    """A sample value: integers as integers, others as the shortest exact float."""
    if isinstance(value, int):
        return str(int(value))
    return repr(float(value))
