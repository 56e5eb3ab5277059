"""The run's side of delivering the outbox to RSTUF.

``rstuf.outbox.RstufDelivery`` sends, polls and publishes; `Delivery` decides
when a run may deliver at all (not under ``--no-rstuf`` or ``--dry-run``, not
without an RSTUF URL, not before RSTUF holds the bootstrap import, not after
RSTUF refused as misconfigured), saves each durable step of it in state.json,
shows its progress, and turns what RSTUF answered into the run's problems and
exit (`RstufMisconfiguredError`). It lives in ``sync`` because it drives the
run's state and summary; the outbox's own rules stay in ``rstuf``.
"""

from __future__ import annotations

import logging

from pypi_index_mirror.ops.cli import ToolError
from pypi_index_mirror.rstuf.errors import RstufMisconfigured
from pypi_index_mirror.rstuf.outbox import RstufDelivery, WaitBudget
from pypi_index_mirror.sync.context import RunContext

log = logging.getLogger(__name__)


class RstufMisconfiguredError(ToolError):
    """RSTUF refused the run's requests in a way no retry fixes (401, 403, not an RSTUF).

    Exit 1, not 75: a person must fix the token, the proxy or the URL, and a unit
    that counts 75 as success would hide it. The state is saved first.
    """


class Delivery:
    """When and how a run hands its outbox to RSTUF (see the module docstring)."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.bootstrap_refusal: str | None = None  # why this run keeps changes from RSTUF
        self.budget = WaitBudget(ctx.config.rstuf_wait)  # one for the whole run
        self.rstuf_delivery: RstufDelivery | None = None
        # RSTUF refused as misconfigured (401, 403, no RSTUF at the URL): nothing more is
        # sent this run, and the run ends with exit 1 once the mirror is saved
        self.rstuf_misconfigured: RstufMisconfigured | None = None

    def next_round(self) -> None:
        """A --watch cycle: the delivery's per-run figures start again."""
        if self.rstuf_delivery is not None:
            self.rstuf_delivery.next_round()

    def forget_rstuf_if_disabled(self) -> None:
        """--no-rstuf: whatever an earlier run kept for RSTUF is dropped, once."""
        if self.ctx.owes_rstuf or self.ctx.config.dry_run:
            return
        box = self.ctx.state.outbox
        if box.dirty or box.tasks or box.publishes or box.uncertain or box.signed:
            owed = box.clear()
            self.ctx.save()
            log.info(
                "--no-rstuf: dropped %d change(s) kept for RSTUF; when RSTUF is enabled, "
                "catch it up with --audit --repair",
                owed,
            )

    def deliver_outbox(self, wait: bool) -> None:
        """Deliver the outbox; `wait` (the end of the run) follows tasks within the budget."""
        box = self.ctx.state.outbox
        if not self.ctx.owes_rstuf or self.ctx.config.dry_run:
            return  # a dry run lists the outbox with its plan
        if not (box.dirty or box.tasks or box.publishes or box.uncertain):
            return
        if self.rstuf_misconfigured is not None:
            return  # refused once already: the changes wait in the outbox
        if self.ctx.rstuf is None:
            if wait:  # once, at the end of the run
                self.ctx.summary.problems.append(
                    f"{len(box)} change(s) wait in the outbox for RSTUF: set --rstuf-url "
                    "(or RSTUF_API_URL), or --no-rstuf to run without RSTUF"
                )
            return
        if not self.bootstrap_imported():
            return
        if self.rstuf_delivery is None:
            self.rstuf_delivery = RstufDelivery(
                self.ctx.state,
                self.ctx.layout,
                self.ctx.rstuf,
                self.save_delivery_step,
                batch=self.ctx.config.rstuf_batch,
                budget=self.budget,
                read_target=self.ctx.writer.target_digest,
            )
        self.ctx.progress.start(self.unconfirmed(), "delivering", unit="paths")
        report = self.rstuf_delivery.deliver(wait)
        left = self.unconfirmed()
        self.ctx.progress.finish("done" if not left else f"{left} not confirmed yet")
        self.ctx.writer.restart_grace(report.superseded)
        self.ctx.save("delivered")
        self.ctx.summary.problems.extend(f"RSTUF: {error}" for error in report.errors)
        self.rstuf_misconfigured = report.misconfigured

    def report_rstuf_surprises(self) -> None:
        """At the end of a run: what RSTUF answered that waiting cannot fix.

        Deletes RSTUF answered with ``not_found_artifacts`` for paths the mirror
        recorded as signed mean RSTUF's database and the mirror were apart (a
        restored backup, a manual change): one warning, and the run ends 75,
        since whatever else differs is found only by --audit. A misconfigured
        RSTUF (401, 403, no RSTUF at the URL) ends the run with exit 1 once
        the state is saved: the changes wait in the outbox, none is lost.
        """
        not_found = self.rstuf_delivery.totals.not_found if self.rstuf_delivery is not None else []
        if not_found:
            shown = ", ".join(not_found[:5]) + (", ..." if len(not_found) > 5 else "")
            self.ctx.summary.problems.append(
                f"RSTUF answered {len(not_found)} delete(s) with not_found_artifacts ({shown}): "
                "it did not hold paths the mirror recorded as signed, so its database and the "
                "mirror were apart; run --audit to find what else differs (--audit --repair "
                "fixes it)"
            )
        if self.rstuf_misconfigured is not None:
            for problem in dict.fromkeys(self.ctx.summary.problems):
                log.warning("%s", problem)
            self.ctx.summary.problems.clear()
            raise RstufMisconfiguredError(
                f"{self.rstuf_misconfigured}; the mirror is updated and its "
                f"{len(self.ctx.state.outbox)} change(s) for RSTUF wait in the outbox until "
                "RSTUF accepts them"
            )

    def unconfirmed(self) -> int:
        """Outbox paths RSTUF has not confirmed: len(outbox) without its set union (cheap)."""
        box = self.ctx.state.outbox
        return len(box.dirty) + sum(len(task.paths) for task in box.tasks)

    def save_delivery_step(self) -> None:
        """Save a durable step of the RSTUF delivery, and show how far the delivery got."""
        self.ctx.save()
        if self.ctx.progress.phase is not None:
            self.ctx.progress.update_to(self.ctx.progress.phase.total - self.unconfirmed())

    def bootstrap_imported(self) -> bool:
        """Whether RSTUF holds the bootstrap import, checked once before the first delivery.

        An update delivered before the operator imported the bootstrap CSV makes
        that import abort on a duplicate path (or, with another importer, lets
        older rows overwrite newer ones). With a TUF metadata URL configured,
        the first delivery after a first sync therefore checks that RSTUF's
        verified metadata signs the root index (of the first mirrored form), the
        CSV's first row; until it does, changes stay in the outbox. Without a
        metadata URL nothing is checked (as before).
        """
        if self.ctx.state.bootstrap_seen or self.ctx.config.tuf_metadata_url is None:
            return True
        if self.bootstrap_refusal is None:
            waiting = f"{len(self.ctx.state.outbox)} change(s) stay in the outbox"
            root = self.ctx.forms[0].root_target  # the CSV's first row of this mirror's forms
            # only here: python-tuf is 20 MiB to load
            from pypi_index_mirror.audit import metadata as tuf_metadata

            try:
                signed = tuf_metadata.signed_target(
                    tuf_metadata.audit_settings(self.ctx.config), root, self.ctx.pypi.environment
                )
            except tuf_metadata.AuditError as exc:
                self.bootstrap_refusal = (
                    f"cannot check that RSTUF holds the bootstrap import ({exc}); {waiting}"
                )
            else:
                if signed is not None:
                    self.ctx.state.bootstrap_seen = True
                    self.ctx.save("bootstrap-seen")
                    return True
                self.bootstrap_refusal = (
                    f"RSTUF's TUF metadata does not sign {root}: the bootstrap import "
                    "has not been done. Write the CSV with `python3 generate_csv.py`, import it "
                    "with `rstuf admin import-artifacts --db-uri ... --csv artifacts.csv`, and "
                    f"let RSTUF publish; until then {waiting}"
                )
            self.ctx.summary.problems.append(self.bootstrap_refusal)
        return False
