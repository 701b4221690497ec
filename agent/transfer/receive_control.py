"""The receiver's side of one control connection, as a state machine.

After the handshake (HELLO answered by ACCEPT, in ``ReceiveSession.serve_control``) the session moves through
phases; each phase names the frame types it takes and each frame type has one handler::

    CHANGES   (watch sessions only) rounds of CHANGES ... CHANGES_END, each answered by MISSED ... CHANGES_ACK
    MANIFEST  ENTRIES batches admitted and diffed as they arrive, NEED / BASIS_HINT / NEED_BASIS back, then
              MANIFEST_ACK (the sender's window, window.py);
              file frames may already come (the sender starts on the first NEEDs)
    DATA      after MANIFEST_END (answered by NEED_END): file frames, then SENDER_DONE
    DONE      every data connection finished and the tree is applied: RESULT goes back

ABORT is taken in any phase; any other frame out of its phase is a ProtocolError that ends the attempt.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from zcrepl.agent.transfer import entrycodec as ec
from zcrepl.agent.transfer import frame as fr
from zcrepl.agent.transfer import opsframe as opf
from zcrepl.agent.transfer.apply import TreeWriter
from zcrepl.agent.transfer.basis import complete_delta
from zcrepl.agent.transfer.changes import apply_ops
from zcrepl.agent.transfer.channel import Channel
from zcrepl.agent.transfer.limits import LimitExceeded
from zcrepl.agent.transfer.uptodate import admit_run
from zcrepl.core.errors import ProtocolError, TransferError
from zcrepl.core.watchtypes import WATCH_ID_BASE

if TYPE_CHECKING:
    from zcrepl.agent.transfer.receive import ReceiveSession, _Sink

FILE_FRAMES = frozenset({fr.T.FILE, fr.T.FILE_SKIP, fr.T.REUSE, fr.T.DIGEST, fr.T.HOLE, fr.T.ZFILE})
PROGRESS_EVERY = 0.5  # seconds between progress reports while frames arrive


class Phase(enum.Enum):
    CHANGES = "changes"
    MANIFEST = "manifest"
    DATA = "data"
    DONE = "done"


_WHEN: dict[fr.T, frozenset[Phase]] = {
    fr.T.CHANGES: frozenset({Phase.CHANGES}),
    fr.T.CHANGES_END: frozenset({Phase.CHANGES}),
    fr.T.ENTRIES: frozenset({Phase.CHANGES, Phase.MANIFEST}),
    fr.T.MANIFEST_END: frozenset({Phase.CHANGES, Phase.MANIFEST}),  # an empty watch manifest sends no ENTRIES
    fr.T.SENDER_DONE: frozenset({Phase.DATA}),
    fr.T.ABORT: frozenset(Phase),
    **{k: frozenset({Phase.MANIFEST, Phase.DATA}) for k in FILE_FRAMES},
}


class ControlSession:
    """Reads frames until SENDER_DONE (or an error) and returns the RESULT to send."""

    def __init__(self, session: ReceiveSession, ch: Channel, writer: TreeWriter, sink: _Sink) -> None:
        self.session = session
        self.spec = session.spec
        self.ch = ch
        self.writer = writer
        self.sink = sink
        self.sync = self.spec.job_id >= WATCH_ID_BASE
        # A job's deletions are --delete's, never the peer's list: a job session starts at its manifest.
        self.phase = Phase.CHANGES if self.sync else Phase.MANIFEST
        self.result: fr.Result | None = None
        self._ops: list[opf.Op] = []
        self._held = 0  # bytes of this round's changes
        self._handlers: dict[fr.T, Callable[[fr.T, bytes], None]] = {
            fr.T.CHANGES: self._changes, fr.T.CHANGES_END: self._changes_end, fr.T.ENTRIES: self._entries,
            fr.T.MANIFEST_END: self._manifest_end, fr.T.SENDER_DONE: self._sender_done, fr.T.ABORT: self._abort,
            **{k: self._file for k in FILE_FRAMES},
        }

    def run(self) -> fr.Result:
        last = 0.0
        while self.result is None:
            kind, payload = self.ch.recv_frame()
            if self.phase not in _WHEN.get(kind, ()):
                raise ProtocolError(self._unexpected(kind))
            self._handlers[kind](kind, payload)
            now = time.monotonic()
            if now - last > PROGRESS_EVERY:
                last = now
                self.spec.on_progress(self.session.stats())
        return self.result

    def _unexpected(self, kind: fr.T) -> str:
        if kind in (fr.T.CHANGES, fr.T.CHANGES_END):
            if not self.sync:
                return f"{kind.name} in a job session: only watch rules send changes"
            return f"{kind.name} after the manifest started"
        if kind is fr.T.SENDER_DONE:
            return "SENDER_DONE before MANIFEST_END"
        return f"unexpected {kind.name} frame on the control connection ({self.phase.value} phase)"

    # -- CHANGES ------------------------------------------------------------------------------------
    def _changes(self, _kind: fr.T, payload: bytes) -> None:
        self.writer.restricted = True
        limit = self.spec.limits.max_changes_bytes
        self._held += len(payload)
        if self._held > limit:
            raise LimitExceeded(
                f"one round of changes sent to {self.spec.label} is larger than {limit:,} bytes; raise "
                "max_changes_bytes in that agent's config if the source really renames that much at once")
        self._ops += opf.decode_ops(payload, (opf.OP_RENAME, opf.OP_DELETE))
        if len(self._ops) > opf.MAX_OPS * 64:
            raise ProtocolError("too many changes in one round")

    def _changes_end(self, _kind: fr.T, _payload: bytes) -> None:
        self.writer.restricted = True
        missed = apply_ops(self.writer, self._ops)
        self._ops, self._held = [], 0
        for f in opf.op_batches([opf.Op(opf.OP_MISSED, p) for p in missed], fr.T.MISSED):
            self.ch.send(f)
        self.ch.send(fr.frame(fr.T.CHANGES_ACK))

    # -- MANIFEST -----------------------------------------------------------------------------------
    def _entries(self, _kind: fr.T, payload: bytes) -> None:
        self.phase = Phase.MANIFEST
        writer = self.writer
        need: list[int] = []
        bases: list[fr.Basis] = []
        for run in ec.decode_runs(payload):
            for index, wanted in admit_run(writer, run):
                if isinstance(wanted, fr.Basis):
                    bases.append(wanted)
                else:
                    need.append(index)
        writer.end_batch()
        if need:
            self.ch.send(fr.encode_need(need))
        later = [b for b in bases if b.kind == fr.BasisKind.DELTA and not b.hashes]
        for b in bases:
            self.ch.send(fr.encode_hint(b.index, b.block) if b in later else fr.encode_basis(b))
        for b in later:  # the sender hashes its version meanwhile
            self.ch.send(fr.encode_basis(complete_delta(writer, b)))
        self.ch.send(fr.encode_u64(fr.T.MANIFEST_ACK, writer.n_entries))  # the sender lets go of the rest

    def _manifest_end(self, _kind: fr.T, payload: bytes) -> None:
        self.writer.end_manifest(fr.decode_u64(payload, "MANIFEST_END"))
        self.phase = Phase.DATA
        self.ch.send(fr.frame(fr.T.NEED_END))

    # -- DATA ---------------------------------------------------------------------------------------
    def _file(self, kind: fr.T, payload: bytes) -> None:
        self.session.file_frame(self.ch, payload, kind, self.sink)

    def _sender_done(self, _kind: fr.T, _payload: bytes) -> None:
        self.session.data_finished()
        self.result = self.writer.finish()
        self.phase = Phase.DONE

    def _abort(self, _kind: fr.T, payload: bytes) -> None:
        raise TransferError(f"the source aborted: {fr.decode_text(payload)}")
