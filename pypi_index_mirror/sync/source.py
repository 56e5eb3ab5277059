"""Where a run learns what changed: PyPI's XML-RPC changelog, or its JSON root.

`Source` knows which of the two the mirror follows this run (XML-RPC unless
``--no-xmlrpc``, or until XML-RPC fails: then the JSON root for the rest of the
run), reads PyPI's last serial and whole listing through it, and refuses a
listing too small to be the index's. The update and the full sync ask it; what
a listing *means* is ``upstream.changelog``'s and ``sync.plan``'s.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

from pypi_index_mirror.sync.context import RunContext
from pypi_index_mirror.sync.plan import listing_refusal
from pypi_index_mirror.upstream.changelog import Listing, add_listed
from pypi_index_mirror.upstream.errors import UntrustedListing, XmlRpcUnavailable

log = logging.getLogger(__name__)


XMLRPC_SOURCE = "XML-RPC changelog"
JSON_ROOT_SOURCE = "JSON root /simple/"


class Source:
    """What the mirror follows PyPI through this run, and the reads made through it."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.kind = JSON_ROOT_SOURCE if ctx.config.no_xmlrpc else XMLRPC_SOURCE
        self.source_noted = False
        self.listing_seen = 0  # the last listing's entries before the filter (fetch_listing)

    def xmlrpc_last_serial(self) -> int | None:
        """PyPI's ``changelog_last_serial``; None when the mirror follows the JSON root."""
        if self.kind != XMLRPC_SOURCE:
            return None
        try:
            return self.upstream_last_serial()
        except XmlRpcUnavailable as exc:
            self.fall_back(exc)
            return None

    def upstream_last_serial(self) -> int:
        """PyPI's last changelog serial, noted for the status file (the lag behind it)."""
        serial = self.ctx.pypi.changelog_last_serial()
        self.ctx.summary.upstream_serial, self.ctx.summary.upstream_seen = serial, time.time()
        return serial

    def note_source(self) -> None:
        """Log, once a run, what the mirror follows PyPI through."""
        if not self.source_noted:
            self.source_noted = True
            why = " (--no-xmlrpc)" if self.ctx.config.no_xmlrpc else ""
            log.info("following PyPI through its %s%s", self.kind, why)

    def fall_back(self, error: XmlRpcUnavailable) -> None:
        """XML-RPC is gone: use the JSON root for the rest of the run (said once)."""
        log.warning(
            "%s; following PyPI through its %s instead (--no-xmlrpc skips the attempt)",
            error,
            JSON_ROOT_SOURCE,
        )
        self.kind = JSON_ROOT_SOURCE
        self.source_noted = True

    def fetch_listing(self, last_serial: int | None = None) -> tuple[Listing, int]:
        """Every project PyPI lists (filtered) with its serial, and PyPI's serial then.

        Through XML-RPC the serial is taken before the listing (`last_serial`,
        when this run asked for it already); the JSON root carries its own
        (``X-PyPI-Last-Serial``, as cached by the CDN with it).
        """
        allows = None if self.ctx.filter.everything else self.counting_allows
        self.listing_seen = 0
        if self.kind == XMLRPC_SOURCE:
            wanted = Listing(self.spill_dir())
            try:
                if last_serial is None:
                    last_serial = self.upstream_last_serial()
                self.ctx.pypi.list_packages_with_serial(
                    functools.partial(add_listed, wanted, allows=allows)
                )
                self.note_source()
                if allows is None:
                    self.listing_seen = len(wanted)
                return wanted, last_serial
            except XmlRpcUnavailable as exc:
                self.fall_back(exc)
        wanted = Listing(self.spill_dir())
        last_serial = self.ctx.pypi.list_projects_json(
            functools.partial(add_listed, wanted, allows=allows)
        )
        if allows is None:
            self.listing_seen = len(wanted)
        self.ctx.summary.upstream_serial, self.ctx.summary.upstream_seen = last_serial, time.time()
        self.note_source()
        return wanted, last_serial

    def counting_allows(self, name: str) -> bool:
        """The filter's verdict on a listed name, counted (`check_listing` needs the
        listing's size before the filter)."""
        self.listing_seen += 1
        return self.ctx.filter.allows(name)

    def check_listing(self, listed: int, held: int, serial: int | None) -> None:
        """Refuse (UntrustedListing) a listing too empty or small to be the index's, unless
        --trust-listing; before anything is written, so state and tree stay as they were."""
        reason = listing_refusal(self.listing_seen, listed, held, serial)
        if reason is None:
            return
        source = "list_packages_with_serial" if self.kind == XMLRPC_SOURCE else "JSON root /simple/"
        if not self.ctx.config.trust_listing:
            raise UntrustedListing(source, reason)
        log.warning("PyPI's %s %s; taken as the truth (--trust-listing)", source, reason)

    def spill_dir(self) -> Path | None:
        """Where a listing's sorted runs go while it streams in (a dry run: in memory)."""
        if self.ctx.config.dry_run:
            return None
        self.ctx.layout.staging_dir.mkdir(parents=True, exist_ok=True)
        return self.ctx.layout.staging_dir
