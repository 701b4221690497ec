"""Runs the orders an agent receives: one receiver registration or sender thread per attempt.

Every outcome is reported upward as a TransferReport; errors carry one sentence naming the host, the
path and the cause, and whether another attempt could help.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from zcrepl.agent import priority
from zcrepl.agent.attempt_local import run_local
from zcrepl.agent.attempt_receive import run_receive
from zcrepl.agent.attempt_state import Active, ended, live_bytes, live_stats, no_tls
from zcrepl.agent.exports import Exports
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.failure import explain
from zcrepl.agent.transfer.frame import Hello
from zcrepl.agent.transfer.jobdirs import check_destination, open_source, resolve_dirs
from zcrepl.agent.transfer.leftovers import Sweeper
from zcrepl.agent.transfer.limits import SessionLimits
from zcrepl.agent.transfer.partial import drop_partials
from zcrepl.agent.transfer.peer import Binding, resolve
from zcrepl.agent.transfer.receive import ReceiveSession, ReceiveSpec
from zcrepl.agent.transfer.saferoot import SafeRoot
from zcrepl.agent.transfer.send import Sender, SendSpec
from zcrepl.agent.transfer.server import DataServer, Grant, TicketBook
from zcrepl.agent.transfer.snapshot import begin_snapshot, job_rel
from zcrepl.core.config import split_address
from zcrepl.core.errorkind import error_kind
from zcrepl.core.errors import ConfigError, ZcError
from zcrepl.core.logs import carry, kv
from zcrepl.core.paths import show
from zcrepl.core.types import (
    CancelOrder,
    Phase,
    ReceiveOrder,
    Role,
    SendOrder,
    Skipped,
    ThrottleOrder,
    TransferReport,
    TransferStats,
)

log = logging.getLogger(__name__)

ReportFn = Callable[[TransferReport], None]
TICKET_TTL = 120.0


class Attempts:
    def __init__(
        self,
        host: str,
        exports: Exports,
        data: DataServer,
        tickets: TicketBook,
        report: ReportFn,
        *,
        limits: SessionLimits,
        sweeper: Sweeper | None = None,
    ) -> None:
        self.host = host
        self.sweeper = sweeper
        self.limits = limits
        self.exports = exports
        self.data = data
        self.tickets = tickets
        self.report = report
        self.io_timeout = data.io_timeout  # the agent's one io_timeout, for sends too
        self._lock = threading.Lock()
        self._active: dict[tuple[int, int, Role], Active] = {}
        # Partials kept by recently failed receives, so an operator's cancel that arrives after the
        # connection already broke can still drop them.
        self._kept: collections.OrderedDict[tuple[int, int], tuple[SafeRoot, tuple[bytes, ...], list[bytes]]] = (
            collections.OrderedDict())
        self._discarded: set[tuple[int, int]] = set()
        self._moved_done = 0  # file bytes of transfers already forgotten (see bytes_moved)
        self._done_by_role = {r: TransferStats() for r in Role}  # last figures of forgotten transfers, per role
        self._errors: collections.Counter[str] = collections.Counter()  # failed transfers per error_kind
        # The newest attempt seen per job: the fence that keeps two attempts of a job from ever writing here at
        # the same time (an older one's orders and data connections are refused, see _supersede).
        self._newest: collections.OrderedDict[int, int] = collections.OrderedDict()

    # -- queries ------------------------------------------------------------------------------------
    def count(self) -> int:
        with self._lock:
            return len(self._active)

    def refs(self) -> list[tuple[int, int]]:
        with self._lock:
            return sorted({(j, a) for j, a, _ in self._active})

    def bytes_moved(self) -> int:
        """File bytes sent and received by this agent's network transfers since it started: a counter
        whose rate is the health sample's ``transfer_bps``. Live figures are the senders' and receivers'
        own counters, read without their locks (a sample may lag by a block); a finished transfer's last
        figure moves into a running total, so the counter does not drop when it ends."""
        with self._lock:
            return self._moved_done + sum(live_bytes(a) for a in self._active.values())

    def totals(self) -> dict[Role, tuple[int, int]]:
        """(file bytes, files) moved per role since the agent started, live transfers included."""
        with self._lock:
            out = {r: (s.bytes_done, s.files_done) for r, s in self._done_by_role.items()}
            for a in self._active.values():
                s = live_stats(a)
                out[a.role] = (out[a.role][0] + s.bytes_done, out[a.role][1] + s.files_done)
        return out

    def error_counts(self) -> dict[str, int]:
        """Failed transfers since the agent started, per :func:`~zcrepl.core.errorkind.error_kind`."""
        with self._lock:
            return dict(self._errors)

    # -- orders -------------------------------------------------------------------------------------
    def receive(self, order: ReceiveOrder) -> None:
        label = f"{self.host}:{show(order.path)}"
        older = self._supersede(order.job_id, order.attempt, Role.RECEIVER, label)
        if older is None:
            return
        try:
            if order.options.encrypt and self.data.tls is None and order.source_host != self.host:
                raise ConfigError(no_tls(self.host, "receive"))  # (a same-host copy never touches the network)
            root, rel = self.exports.resolve(order.path)
            rel = job_rel(rel, order.options)  # a snapshot: its in-progress directory
            check_destination(root, rel, label)
            resolve_dirs(self.exports.resolve, order.options)  # --backup-dir, --link-dest: inside the exports
        except ZcError as err:
            self._fail(order.job_id, order.attempt, Role.RECEIVER, str(err), retryable=False)
            return
        key = (order.job_id, order.attempt, Role.RECEIVER)
        with self._lock:
            self._active[key] = Active(Role.RECEIVER)
        if any(not e.is_set() for e in older):
            # An older attempt of this job is still stopping here: get ready only once it has (off the thread
            # that reads the controller's orders).
            threading.Thread(target=carry(self._ready_after), args=(order, root, rel, label, older),
                             name=f"zc-fence-{order.job_id}", daemon=True).start()
            return
        self._ready(order, root, rel, label)

    def _ready_after(self, order: ReceiveOrder, root: SafeRoot, rel: tuple[bytes, ...], label: str,
                     older: list[threading.Event]) -> None:
        deadline = time.monotonic() + self.io_timeout
        for e in older:
            e.wait(max(0.0, deadline - time.monotonic()))
        if all(e.is_set() for e in older):
            self._ready(order, root, rel, label)
            return
        self._forget((order.job_id, order.attempt, Role.RECEIVER))
        self._fail(order.job_id, order.attempt, Role.RECEIVER, f"{label}: an older attempt of job {order.job_id} "
                   f"is still stopping here after {self.io_timeout:g}s; the next attempt will try again",
                   retryable=True)

    def _ready(self, order: ReceiveOrder, root: SafeRoot, rel: tuple[bytes, ...], label: str) -> None:
        key = (order.job_id, order.attempt, Role.RECEIVER)
        with self._lock:
            active = self._active.get(key)
        if active is None or active.cancel.is_set():  # cancelled while an older attempt was stopping
            self._forget(key)
            return
        bind = Binding(order.source_host, resolve(order.source_addresses), order.options.encrypt)

        def serve(ch: Channel, hello: Hello) -> None:
            self._serve_receive(order, root, rel, label, ch, hello, bind)

        def expired() -> None:
            self._forget(key)
            self._fail(order.job_id, order.attempt, Role.RECEIVER,
                       f"{label}: the source never connected to the data port "
                       f"{self.data.address[0]}:{self.data.address[1]} within {TICKET_TTL:.0f}s", retryable=True)

        self.tickets.register(order.ticket, Grant(order.job_id, order.attempt,
                                                  time.monotonic() + TICKET_TTL, serve, expired, bind=bind))
        log.info("receive ready", extra=kv(job=order.job_id, attempt=order.attempt, path=order.path,
                                           source=order.source_host, encrypt=order.options.encrypt,
                                           source_addresses=",".join(sorted(bind.addresses))))
        self.report(TransferReport(order.job_id, order.attempt, Role.RECEIVER, Phase.READY))

    def send(self, order: SendOrder) -> None:
        label = f"{self.host}:{show(order.path)}"
        older = self._supersede(order.job_id, order.attempt, Role.SENDER, label)
        if older is None:
            return
        try:
            if order.options.encrypt and self.data.tls is None and order.dest_host != self.host:
                raise ConfigError(no_tls(self.host, "send"))
            root, rel = self.exports.resolve(order.path)
            src = open_source(root, rel, label)
            address = split_address(order.dest_data_address)
        except (ZcError, ConfigError) as err:
            self._fail(order.job_id, order.attempt, Role.SENDER, str(err), retryable=False)
            return
        key = (order.job_id, order.attempt, Role.SENDER)
        active = Active(Role.SENDER)
        with self._lock:
            self._active[key] = active
        if order.dest_host == self.host:
            active.thread = threading.Thread(target=carry(run_local),
                                             args=(self, order, src, key, label, active, older),
                                             name=f"zc-local-{order.job_id}", daemon=True)
            active.thread.start()
            return
        spec = SendSpec(
            job_id=order.job_id, attempt=order.attempt, ticket=order.ticket, address=address,
            options=order.options, cancel=active.cancel, io_timeout=self.io_timeout,
            on_progress=lambda s: self.report(
                TransferReport(order.job_id, order.attempt, Role.SENDER, Phase.PROGRESS, s)),
            encrypt=order.options.encrypt, dest=order.dest_host, contexts=self.data.tls,
        )
        active.thread = threading.Thread(
            target=carry(self._run_sender), args=(spec, src, key, label, order), name=f"zc-send-{order.job_id}",
            daemon=True,
        )
        active.thread.start()

    def throttle(self, order: ThrottleOrder) -> None:
        """The load policy's cap or pause for a running send (a same-host copy is not paced)."""
        with self._lock:
            a = self._active.get((order.job_id, order.attempt, Role.SENDER))
        if a is None or a.sender is None:
            return
        a.sender.pacer.set(order.bwlimit, order.paused)
        log.info("transfer throttled", extra=kv(job=order.job_id, attempt=order.attempt, bwlimit=order.bwlimit,
                                                paused=order.paused, reason=order.reason))

    def cancel(self, order: CancelOrder) -> None:
        with self._lock:
            hits = [a for (j, att, _), a in self._active.items() if (j, att) == (order.job_id, order.attempt)]
        for a in hits:
            a.cancel.set()
            if order.discard_partial and a.session is not None:
                a.session.discard_partials()
        if order.discard_partial:
            with self._lock:
                kept = self._kept.pop((order.job_id, order.attempt), None)
                self._discarded.add((order.job_id, order.attempt))
            if kept is not None:
                drop_partials(*kept)
        if self.tickets.revoke(order.job_id, order.attempt):
            self._forget((order.job_id, order.attempt, Role.RECEIVER))
        self.data.abort(order.job_id, order.attempt)
        log.info("transfer cancelled", extra=kv(job=order.job_id, attempt=order.attempt, reason=order.reason))

    def cancel_all(self, reason: str) -> None:
        for job_id, attempt in self.refs():
            self.cancel(CancelOrder(job_id, attempt, reason))

    def _supersede(self, job_id: int, attempt: int, role: Role, label: str) -> list[threading.Event] | None:
        """Make ``attempt`` the newest of its job here and cancel this agent's older attempts of it; returns
        the events that tell when those have stopped, or None (with a report) when the order is itself older
        than one already seen: a controller that lost track of an attempt never gets two writing at once."""
        with self._lock:
            newest = self._newest.get(job_id, 0)
            if attempt >= newest:
                self._newest[job_id] = attempt
                self._newest.move_to_end(job_id)
                while len(self._newest) > 4096:
                    self._newest.popitem(last=False)
            older = {(j, a): act for (j, a, _), act in self._active.items() if j == job_id and a < attempt}
        if attempt < newest:
            log.warning("stale order refused", extra=kv(job=job_id, attempt=attempt, newest=newest))
            self._fail(job_id, attempt, role, f"{label}: attempt {attempt} of job {job_id} is older than attempt "
                       f"{newest}, which this agent already received; it is not run", retryable=True)
            return None
        for j, a in {(j, a) for (j, a) in older}:
            self.cancel(CancelOrder(j, a, f"attempt {attempt} of job {j} supersedes it"))
        return [act.ended for act in older.values()]

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [a.thread for a in self._active.values() if a.thread is not None]
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- workers ------------------------------------------------------------------------------------
    def _run_sender(self, spec: SendSpec, src: SafeRoot, key: tuple[int, int, Role], label: str,
                    order: SendOrder) -> None:
        priority.apply_to_this_thread()
        t0 = time.monotonic()
        sender = Sender(spec, src)
        with self._lock:
            active = self._active.get(key)
            if active is not None:
                active.sender = sender
        try:
            stats = sender.run()
        except Exception as err:  # any exception, a bug's too, fails the attempt now (not at the stall timeout)
            self._forget(key)
            f = explain(err, io_timeout=self.io_timeout, between=f"{self.host} and {order.dest_host}")
            if f.cancelled:
                log.info("send cancelled", extra=kv(job=spec.job_id, attempt=spec.attempt))
                return
            if f.unexpected:
                log.exception("sender crashed", extra=kv(job=spec.job_id))
            where = f"{label} -> {order.dest_host}:{show(order.dest_path)}"
            self._fail(spec.job_id, spec.attempt, Role.SENDER, f"{where}: {f.message}", retryable=f.retryable,
                       stats=sender.snapshot(), skipped=tuple(sender.skips.listed))
            return
        finally:
            src.close()
        self._forget(key)
        log.info("send done", extra=kv(job=spec.job_id, attempt=spec.attempt, files=stats.files_done,
                                       bytes=stats.bytes_done, wire=stats.wire_bytes, left_out=stats.entries_skipped,
                                       transport=stats.transport, compress=spec.options.compress.name.lower(),
                                       seconds=round(time.monotonic() - t0, 3)))
        self.report(TransferReport(spec.job_id, spec.attempt, Role.SENDER, Phase.DONE, stats,
                                   skipped=tuple(sender.skips.listed)))

    def _serve_receive(self, order: ReceiveOrder, root: SafeRoot, rel: tuple[bytes, ...], label: str,
                       ch: Channel, hello: Hello, bind: Binding) -> None:
        key = (order.job_id, order.attempt, Role.RECEIVER)
        if self.sweeper is not None and not order.options.dry_run:  # first, what dead transfers left here goes
            self.sweeper.request(root, rel)
        try:
            snap = begin_snapshot(root, rel, order.options, label)  # NoSnapshot unless the job is a snapshot
        except (ZcError, OSError) as err:
            f = explain(err, io_timeout=self.io_timeout)
            with contextlib.suppress(OSError):
                ch.send(fr.encode_text(fr.T.ABORT, f"{label}: {f.message}"))
            self._forget(key)
            self._fail(order.job_id, order.attempt, Role.RECEIVER, f"{label}: {f.message}", retryable=f.retryable)
            return
        active = None
        try:
            spec = ReceiveSpec(order.job_id, order.attempt, root, rel, order.options, label,
                               policy=self.exports.policy(root), limits=self.limits, bind=bind,
                               dirs=snap.dirs(resolve_dirs(self.exports.resolve, order.options)))
            session = ReceiveSession(spec, self.tickets)
            with self._lock:
                active = self._active.get(key)
                if active is not None:
                    active.session = session
            run_receive(self, order, root, rel, label, ch, hello, session, snap)
        finally:
            snap.close()  # before the attempt counts as ended: the next run may clean up what it left
            if active is not None:
                ended(active, key)

    def _keep_partials(self, ref: tuple[int, int], kept: tuple[SafeRoot, tuple[bytes, ...], list[bytes]]) -> None:
        """A failed receive's partials stay for the next attempt, unless the operator's cancel came first."""
        with self._lock:
            discard = ref in self._discarded
            if not discard:
                self._kept[ref] = kept
                while len(self._kept) > 64:
                    self._kept.popitem(last=False)
        if discard:
            drop_partials(*kept)

    def _forget(self, key: tuple[int, int, Role]) -> None:
        with self._lock:
            a = self._active.pop(key, None)
            if a is not None:
                last = live_stats(a)
                self._moved_done += last.bytes_done
                done = self._done_by_role[a.role]
                self._done_by_role[a.role] = replace(done, bytes_done=done.bytes_done + last.bytes_done,
                                                     files_done=done.files_done + last.files_done)
                if a.session is None:  # a serving thread signals its session's end itself, after its report
                    ended(a, key)

    def _fail(self, job_id: int, attempt: int, role: Role, error: str, *, retryable: bool,
              stats: TransferStats | None = None, skipped: tuple[Skipped, ...] = ()) -> None:
        log.warning("transfer failed", extra=kv(job=job_id, attempt=attempt, role=role.value, error=error))
        with self._lock:
            self._errors[error_kind(error)] += 1
        self.report(TransferReport(job_id, attempt, role, Phase.FAILED, stats or TransferStats(), error,
                                   retryable, skipped))
