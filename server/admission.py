"""Admission by reservation: how many upload bytes the server receives at once.

An upload's header announces its size. Before any of its chunks is read, the upload waits
until that many bytes of the in-flight budget are free, then reserves them all at once and
holds them until it is folded, refused or dropped. While it waits the server reads nothing of
its stream, so gRPC's flow control holds the sender back: uploads queue instead of being told
to come again. An upload never holds part of its size while waiting for the rest, so two
half-admitted uploads cannot wait on each other; waiters are admitted first come, first
served, so a large upload is not passed over forever by small ones.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

# The server's default --max-inflight-mb, and so its default largest update: room for the
# largest updates fedstock's models send (a forest of full-depth trees is 300 MB and more).
# A job of many mid-sized updates peaks lower under a budget of about one of them
# (docs/performance.md, admission).
DEFAULT_INFLIGHT_MIB = 4096.0
# How often a waiter looks again at whether it was abandoned (its task closed) when nothing
# woke it: a call that ends wakes every waiter at once (see Admission.wake).
RECHECK_SECONDS = 1.0


class Admission:
    """Bytes all uploads in flight may hold together, reserved whole by each before it is
    read, in the order the uploads asked."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError(f"the in-flight budget must be positive, got {limit} bytes")
        self.limit = limit
        self._used = 0
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()

    def reserve(
        self, nbytes: int, until: float, abandoned: Callable[[], bool] = lambda: False
    ) -> bool:
        """Wait until `nbytes` are free and every earlier waiter is admitted, then take them:
        True. False, holding nothing, once `until` (time.monotonic) has passed or
        `abandoned()` says the upload is no longer wanted. ValueError if `nbytes` is more than
        the whole budget: such a reservation could never be taken, and the server refuses any
        upload above its largest update, which is never more than the budget."""
        if nbytes > self.limit:
            raise ValueError(
                f"reserving {nbytes} bytes, more than the {self.limit} bytes all uploads in "
                "flight may hold together"
            )
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or self._used + nbytes > self.limit:
                    remaining = until - time.monotonic()
                    if remaining <= 0 or abandoned():
                        return False
                    self._cond.wait(timeout=min(remaining, RECHECK_SECONDS))
                self._used += nbytes
                return True
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next in line may fit now, or be first

    def give(self, nbytes: int) -> None:
        """Hand back bytes a reservation took."""
        with self._cond:
            if nbytes > self._used:
                raise ValueError(f"giving back {nbytes} bytes, only {self._used} are reserved")
            self._used -= nbytes
            self._cond.notify_all()

    def wake(self) -> None:
        """Make every waiter look again at whether it was abandoned (a call ended)."""
        with self._cond:
            self._cond.notify_all()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    @property
    def waiting(self) -> int:
        """Uploads waiting for room now."""
        with self._cond:
            return len(self._queue)
