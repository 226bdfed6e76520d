"""The task channel over gRPC: who is connected, and which tasks are open.

The round loop sends tasks and waits with a deadline (server/channel.py); handler threads
deliver tasks to polling clients and accept their outcomes. Accepting (is this update well
formed, from the right client, for an open task?) happens here, as it arrives; combining is
the strategy's.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from client.receipts import Receipt
from common.members import PAPER, Members
from proto.fedstock.v1 import federation_pb2 as pb
from server.channel import Accept, Assignment, Keep, Phase, as_it_is
from server.strategy import ClientResult, Failure

log = logging.getLogger("fedstock.server")

# A client seen this recently counts as connected even between two polls.
RECENTLY_SEEN_SECONDS = 5.0
# While the quorum is not there, the log says this often who is connected and who is not.
QUORUM_REPORT_SECONDS = 30.0
# Calls one session may hold open at once: an honest client holds one Session stream (or polls
# and uploads, one of each) and may overlap a retry; more would only hold handler threads the
# others need.
MAX_STREAMS_PER_SESSION = 4


class JoinRefused(Exception):
    """A join the server will not accept; `reason` tells the client what to do about it."""


@dataclass
class ClientSession:
    province: str
    session: str
    rows: int
    version: str
    last_seen: float
    # Shares the coordinator's lock; notified only when this client has something to hear.
    wakeup: threading.Condition
    polling: int = 0
    pending: Assignment | None = None
    open_task: str | None = None
    told_to_stop: bool = False
    tasks: int = 0
    streams: int = 0  # GetTask, Submit and Session calls open now
    # Set by the session's first poll: a Join alone (anyone's, on an --insecure server) does
    # not make a member, so it cannot count toward the quorum or be handed a task.
    member: bool = False
    receipts_sent: int = 0  # ledger receipts this session was given, oldest first
    # Whether its open task went out over a session stream, which stays open while it works.
    streamed: bool = False

    def alive(self, now: float) -> bool:
        return bool(self.polling or self.open_task or now - self.last_seen < RECENTLY_SEEN_SECONDS)

    def taking_part(self, now: float) -> bool:
        """A member that is alive: one that can take a task."""
        return self.member and self.alive(now)


@dataclass(frozen=True)
class ClientStatus:
    """One session as the live view shows it, copied under the lock."""

    province: str
    rows: int
    seconds_since_seen: float
    alive: bool
    told_to_stop: bool
    tasks: int
    task_kind: int | None


@dataclass(frozen=True)
class Status:
    """What the coordinator knows at one instant: sessions, open phases, refusals, stop."""

    clients: list[ClientStatus]
    open_phases: list[tuple[int, int]]  # (round, task kind), oldest first
    updates_rejected: int
    stop_reason: str
    stop_failed: bool
    stopped_at: float | None  # time.monotonic() of the stop


class Coordinator:
    def __init__(
        self,
        poll_seconds: float,
        report_seconds: float = QUORUM_REPORT_SECONDS,
        report_hint: str = "",
        members: Members = PAPER,
        return_seconds: float = 0.0,
    ) -> None:
        self.poll_seconds = poll_seconds
        # How long a client whose session stream ended has to call again before the task it
        # holds, or is handed, fails (0: until its deadline).
        self.return_seconds = return_seconds
        self.members = members  # who may join
        self.report_seconds = report_seconds
        self.report_hint = report_hint  # what a client must do to be let in, said with each report
        self._lock = threading.RLock()
        # Wakes the round loop (answers, joins); each client has its own for new tasks.
        self._cond = threading.Condition(self._lock)
        self._clients: dict[str, ClientSession] = {}
        self._sessions: dict[str, ClientSession] = {}
        self._open: dict[str, Phase] = {}
        self._uploading: set[str] = set()  # open tasks an upload is answering right now
        self._stop_reason = ""
        self._stop_failed = False
        self._stopped_at: float | None = None
        self._updates_rejected = 0
        self._receipts: list[pb.LedgerReceipt] = []

    # -- membership ---------------------------------------------------------------------------

    def join(self, province: str, rows: int, version: str) -> ClientSession:
        now = time.monotonic()
        with self._cond:
            if self._stop_reason:
                raise JoinRefused(f"the federation is stopping: {self._stop_reason}")
            existing = self._clients.get(province)
            if existing is not None and existing.polling:
                raise JoinRefused(f"province {province!r} is already connected")
            if existing is not None:
                # Not waiting for work: crashed or restarted. The new session takes its place.
                log.info("%s rejoins; its previous session is closed", province)
                self._sessions.pop(existing.session, None)
                phase = self._open.get(existing.open_task or "")
                if phase is not None:
                    self._close(phase, existing.open_task, "the client restarted during the task")
            client = ClientSession(
                province,
                secrets.token_urlsafe(24),
                rows,
                version,
                now,
                threading.Condition(self._lock),
            )
            self._clients[province] = client
            self._sessions[client.session] = client
            self._cond.notify_all()
            return client

    def client_for(self, session: str) -> ClientSession | None:
        with self._cond:
            client = self._sessions.get(session)
            if client is not None:
                client.last_seen = time.monotonic()
            return client

    def open_stream(self, client: ClientSession) -> bool:
        """Count one more call of `client`'s, unless it holds its share of calls already."""
        with self._cond:
            if client.streams >= MAX_STREAMS_PER_SESSION:
                return False
            client.streams += 1
            return True

    def close_stream(self, client: ClientSession) -> None:
        """One call of `client`'s ended. If it was the last, while the client works on a task
        it was handed over a session stream (which a working client keeps open), the client
        may be gone (killed, crashed) or only retrying: it has `return_seconds` to call again."""
        with self._cond:
            client.streams -= 1
            task_id = client.open_task
            if not client.streams and task_id is not None:
                self._await_return(client, task_id)

    def _await_return(self, client: ClientSession, task_id: str) -> None:
        """Give `client`, a session-stream client that holds no call now, `return_seconds` to
        call again before `task_id` fails: whether its stream ended while it worked on the
        task, or before the task was handed to it."""
        if not client.streamed or not self.return_seconds:
            return
        timer = threading.Timer(self.return_seconds, self._unreturned, (client, task_id))
        timer.daemon = True
        timer.start()

    def _unreturned(self, client: ClientSession, task_id: str) -> None:
        """Fail `task_id` if its client's session has held no call since its stream ended: it
        did not come back, so the round goes on without it instead of waiting for the deadline.
        A newer Join of the province, or any call of this session, leaves the task open."""
        with self._cond:
            if client.streams or client.open_task != task_id:
                return
            why = (
                f"the session stream of {client.province} ended and it did not call "
                f"again within {self.return_seconds:g} s (--idle-timeout): taken for gone"
            )
            if self.fail_silent(client, self.return_seconds, why):
                log.warning("%s", why)

    def roster(self) -> list[str]:
        return sorted(self.members.names)

    def connected(self) -> list[str]:
        now = time.monotonic()
        with self._cond:
            return sorted(p for p, c in self._clients.items() if c.taking_part(now))

    def wait_for_clients(self, count: int, timeout: float) -> list[str]:
        """Connected provinces once `count` are there, or whoever is there when time runs out."""
        start = time.monotonic()
        end, report = start + timeout, start + self.report_seconds
        with self._cond:
            while len(connected := self.connected()) < count:
                now = time.monotonic()
                if now >= report:  # before the end check: a wait longer than one period reports
                    missing = sorted(set(self.members.names) - set(connected))
                    if len(missing) > 12:
                        missing = [*missing[:12], f"and {len(missing) - 12} more"]
                    log.info(
                        "waiting for the quorum, %d of %d connected after %.0f s: %s; not "
                        "connected: %s%s",
                        len(connected),
                        count,
                        now - start,
                        ", ".join(connected) or "none",
                        ", ".join(missing) or "none",
                        f" ({self.report_hint})" if self.report_hint else "",
                    )
                    report = now + self.report_seconds
                if now >= end:
                    break
                self._cond.wait(timeout=min(1.0, max(0.0, min(end, report) - now)))
        return self.connected()

    def publish_receipt(self, receipt: Receipt) -> None:
        """A new ledger entry's receipt, which every client gets with its next task."""
        with self._cond:
            self._receipts.append(
                pb.LedgerReceipt(
                    index=receipt.index, hash=receipt.hash, signature=receipt.signature
                )
            )

    def _with_receipts(self, client: ClientSession, assignment: Assignment) -> Assignment:
        """The assignment with the receipts this client has not been given yet."""
        task = pb.Task()
        task.CopyFrom(assignment.task)
        task.receipts.extend(self._receipts[client.receipts_sent :])
        client.receipts_sent = len(self._receipts)
        return Assignment(task, assignment.payload)

    # -- tasks --------------------------------------------------------------------------------

    def send(
        self,
        server_round: int,
        kind: int,
        assignments: dict[str, Assignment],
        accept: Accept,
        deadline_seconds: float,
        keep: Keep = as_it_is,
    ) -> Phase:
        """Hand each province its task for its next poll and return at once."""
        phase = Phase(server_round, kind, accept, keep)
        with self._cond:
            self._hand_out(phase, assignments, deadline_seconds)
        return phase

    def wait_any(self, phases: list[Phase], timeout: float) -> list[Phase]:
        """Those of `phases` that have closed, after waiting up to `timeout` for news (an
        answer, a join) unless one already has; tasks past their deadline close as failed."""
        with self._cond:
            if all(phase.waiting for phase in phases):
                now = time.monotonic()
                # Past its deadline a phase waits only on outcomes being kept, which notify.
                end = min([now + timeout, *(p.expires for p in phases if p.expires > now)])
                self._cond.wait(timeout=max(0.0, end - time.monotonic()))
            for phase in phases:
                self._expire(phase)
            return [phase for phase in phases if not phase.waiting]

    def _hand_out(
        self, phase: Phase, assignments: dict[str, Assignment], deadline_seconds: float
    ) -> None:
        kind_name = pb.TaskKind.Name(phase.kind).removeprefix("TASK_KIND_").lower()
        phase.open(time.monotonic(), deadline_seconds)
        for province, assignment in assignments.items():
            task_id = f"r{phase.server_round}-{kind_name}-{province}-{secrets.token_hex(4)}"
            phase.add(task_id, province, assignment)
            client = self._clients[province]
            client.pending, client.open_task = assignment, task_id
            client.tasks += 1
            self._open[task_id] = phase
            client.wakeup.notify()
            if not client.streams:  # no call to hear it on: gone unless it calls again
                self._await_return(client, task_id)

    def _expire(self, phase: Phase) -> None:
        if time.monotonic() < phase.expires:
            return
        for task_id in list(phase.waiting - phase.keeping):
            self._close(phase, task_id, phase.overdue())

    def next_assignment(
        self, client: ClientSession, is_active: Callable[[], bool], streamed: bool = False
    ) -> Assignment:
        """The client's next task, waiting up to the poll interval; WAIT or STOP otherwise.
        `streamed`: asked over a session stream (see `close_stream`)."""
        end = time.monotonic() + self.poll_seconds
        with self._cond:
            client.polling += 1
            if not client.member:
                client.member = True
                self._cond.notify_all()  # the quorum may be there now
            try:
                while True:
                    if client.pending is not None:
                        assignment, client.pending = client.pending, None
                        client.streamed = streamed
                        return self._with_receipts(client, assignment)
                    if self._stop_reason:
                        client.told_to_stop = True
                        self._cond.notify_all()
                        stop = pb.Task(
                            kind=pb.TASK_KIND_STOP,
                            reason=self._stop_reason,
                            failed=self._stop_failed,
                        )
                        return self._with_receipts(client, Assignment(stop, None))
                    remaining = end - time.monotonic()
                    if remaining <= 0 or not is_active():
                        wait = pb.Task(kind=pb.TASK_KIND_WAIT)
                        return self._with_receipts(client, Assignment(wait, None))
                    client.wakeup.wait(timeout=min(remaining, 1.0))
            finally:
                client.polling -= 1
                client.last_seen = time.monotonic()

    def task_phase(self, task_id: str) -> Phase | None:
        with self._cond:
            return self._open.get(task_id)

    def claim(self, task_id: str) -> bool:
        """Let one upload at a time answer an open task, so a retry cannot be counted twice."""
        with self._cond:
            if task_id not in self._open or task_id in self._uploading:
                return False
            self._uploading.add(task_id)
            return True

    def answering(self, task_id: str) -> bool:
        """Whether an upload is answering `task_id` right now."""
        with self._cond:
            return task_id in self._uploading

    def release(self, task_id: str) -> None:
        """The upload ended; unless it answered the task, a retry may now claim it."""
        with self._cond:
            self._uploading.discard(task_id)

    def resolve(self, task_id: str, result: ClientResult) -> bool:
        """Accept a checked outcome; False if its task closed meanwhile. The task leaves the
        open ones under the lock, so from then on the outcome counts and no deadline, stop or
        call-off can close it halfway; what the phase keeps of it (a fold of the update into
        the round's sum) is made outside the lock, which every other call needs meanwhile."""
        with self._cond:
            phase = self._open.pop(task_id, None)
            if phase is None:
                return False
            phase.keeping.add(task_id)
        kept, failure = None, "the server could not keep the update (its log says why)"
        try:
            kept = phase.keep(result)
            failure = None
        finally:
            with self._cond:
                phase.keeping.discard(task_id)
                if kept is not None:
                    phase.results.append(kept)
                self._close(phase, task_id, failure)
        return True

    def refuse(self, task_id: str, reason: str) -> None:
        """An outcome that failed its checks: counted, and its client dropped from the task."""
        with self._cond:
            self._updates_rejected += 1
            self.fail(task_id, reason)

    def fail(self, task_id: str, reason: str) -> None:
        with self._cond:
            phase = self._open.get(task_id)
            if phase is not None:
                self._close(phase, task_id, reason)

    def fail_silent(self, client: ClientSession, seconds: float, reason: str) -> bool:
        """Fail the task `client` holds, as one silent for `seconds`: unless it is no longer its
        province's session (a newer Join's task is not the old stream's to fail) or was heard
        from on another call meanwhile; whether one failed."""
        with self._cond:
            task_id = client.open_task
            if self._sessions.get(client.session) is not client or task_id not in self._open:
                return False
            if time.monotonic() - client.last_seen < seconds:
                return False
            self.fail(task_id, reason)
            return True

    def _close(self, phase: Phase, task_id: str, failure: str | None = None) -> None:
        province = phase.provinces[task_id]
        if failure is not None:
            phase.failures.append(Failure(province, failure))
        phase.waiting.discard(task_id)
        self._open.pop(task_id, None)
        client = self._clients.get(province)
        if client is not None and client.open_task == task_id:
            client.open_task = None
            client.pending = None
        if not phase.waiting:
            # Only a closed phase is news to `wait_any`: waking the round loop at each of its
            # tasks cost a context switch and a pass over the phases per outcome.
            self._cond.notify_all()

    # -- shutdown -----------------------------------------------------------------------------

    def stop(self, reason: str, failed: bool, grace_seconds: float) -> None:
        """Tell every connected client to stop; wait up to `grace_seconds` for them to hear it."""
        end = time.monotonic() + grace_seconds
        with self._cond:
            self._stop_reason, self._stop_failed = reason, failed
            self._stopped_at = time.monotonic()
            # A run that ended mid-phase leaves tasks open: none may be handed out after STOP.
            for task_id, phase in list(self._open.items()):
                self._close(phase, task_id, f"the federation stopped: {reason}")
            for client in self._clients.values():
                client.wakeup.notify_all()
            while time.monotonic() < end:
                now = time.monotonic()
                waiting = [
                    c for c in self._clients.values() if c.taking_part(now) and not c.told_to_stop
                ]
                if not waiting:
                    return
                self._cond.wait(timeout=min(0.5, end - now))

    # -- observation --------------------------------------------------------------------------

    def status(self) -> Status:
        now = time.monotonic()
        with self._cond:
            phases = {id(p): p for p in self._open.values()}.values()
            clients = [
                ClientStatus(
                    c.province,
                    c.rows,
                    now - c.last_seen,
                    c.alive(now),
                    c.told_to_stop,
                    c.tasks,
                    self._open[c.open_task].kind if c.open_task in self._open else None,
                )
                for c in sorted(self._clients.values(), key=lambda c: c.province)
            ]
            return Status(
                clients,
                [(p.server_round, p.kind) for p in phases],
                self._updates_rejected,
                self._stop_reason,
                self._stop_failed,
                self._stopped_at,
            )
