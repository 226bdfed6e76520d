"""What every call passes before the services see it: no call may sit idle for long, health and
reflection share a few threads of their own, and requests are parsed where bad bytes are cheap.

gRPC's synchronous server gives every call one thread of a fixed pool for as long as the call
lasts. A stream that sends nothing, or many health watches or reflection streams (which need no
credentials), would otherwise hold them all and starve Join, GetTask and Submit. This
interceptor wraps every method: a call that has waited on its peer for `idle_seconds` (for the
next message, or for room to send one) is cancelled; at most `side_calls` health and reflection
streams run at once, and at most PEER_SIDE_CALLS of one peer address (the next is refused with
RESOURCE_EXHAUSTED); and each request is parsed by the wrapper, so an undecodable one is an
ordinary INVALID_ARGUMENT (see _decode). Federation calls need no such cap: the servicer
authenticates each before reading a message and holds each session to its share of calls.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import grpc

SIDE_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Health watches and reflection streams open at once, beside the federation's handler threads.
SIDE_CALLS = 4
# Of those, what one peer address may hold: they need no session, so the address is all the
# server knows of who holds them (and one stranger cannot take every one).
PEER_SIDE_CALLS = 2


class Activity:
    """Which calls are waiting on their peer (for its next message, or for room to send ours),
    since when; cancels those that waited too long. Time the server spends working on a call
    (checking an update, holding a long poll) is not idle time."""

    def __init__(self, idle_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: dict[grpc.ServicerContext, float] = {}
        # What to do first when a call is found silent (a session stream's open task fails).
        self._on_silence: dict[grpc.ServicerContext, Callable[[], None]] = {}

    def on_silence(self, context: grpc.ServicerContext, callback: Callable[[], None]) -> None:
        """Run `callback` (once) if this call is ever cancelled for waiting too long."""
        with self._lock:
            self._on_silence[context] = callback

    def waiting(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self._waiting[context] = self._clock()

    def working(self, context: grpc.ServicerContext) -> None:
        with self._lock:
            self._waiting.pop(context, None)

    def done(self, context: grpc.ServicerContext) -> None:
        """The call ended: nothing of it is kept."""
        with self._lock:
            self._waiting.pop(context, None)
            self._on_silence.pop(context, None)

    def cancel_idle(self) -> int:
        """Cancel every call that has waited on its peer longer than `idle_seconds`, after
        running what it asked to have run on silence."""
        now = self._clock()
        with self._lock:
            idle = [c for c, since in self._waiting.items() if now - since > self.idle_seconds]
            for context in idle:
                del self._waiting[context]
            callbacks = [self._on_silence.pop(c) for c in idle if c in self._on_silence]
        for callback in callbacks:
            callback()
        for context in idle:
            context.cancel()
        return len(idle)


def _decode(
    deserialize: Callable[[bytes], Any] | None, raw: bytes, context: grpc.ServicerContext
) -> Any:
    """Parse a request here rather than in gRPC: an undecodable one is refused as any bad input
    is, where gRPC's own failure path logs a traceback and keeps about 16 KB per request
    (grpc/grpc#36908)."""
    if deserialize is None:
        return raw
    try:
        return deserialize(raw)
    except Exception:  # protobuf's DecodeError, or whatever a parser raises on garbage
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid message of this method"
        )


def _watch(activity: weakref.ref[Activity], every: float = 1.0) -> None:
    """Cancel idle calls every `every` seconds for as long as the server's Activity exists."""
    while True:
        time.sleep(every)
        alive = activity()
        if alive is None:
            return
        alive.cancel_idle()
        del alive


def peer_address(peer: str) -> str:
    """The address part of gRPC's peer string, without the port: 'ipv4:127.0.0.1:5000' ->
    'ipv4:127.0.0.1', 'ipv6:[::1]:5000' -> 'ipv6:[::1]' (others, such as 'unix:', whole)."""
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rsplit(":", 1)[0]
    return peer


class SideCalls:
    """How many health and reflection streams are open, in all and per peer address."""

    def __init__(self, total: int, per_peer: int) -> None:
        self.total, self.per_peer = total, per_peer
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def acquire(self, peer: str) -> str | None:
        """Count one more stream of `peer`'s; else why not."""
        with self._lock:
            if sum(self._open.values()) >= self.total:
                return "too many health and reflection streams at once; try again later"
            if self._open.get(peer, 0) >= self.per_peer:
                return f"your address holds {self.per_peer} health and reflection streams already"
            self._open[peer] = self._open.get(peer, 0) + 1
            return None

    def release(self, peer: str) -> None:
        with self._lock:
            self._open[peer] -= 1
            if not self._open[peer]:
                del self._open[peer]


class CallLimits(grpc.ServerInterceptor):
    """Idle timeout on every method; a small cap on health and reflection calls, in all and per
    peer address."""

    def __init__(
        self, activity: Activity, side_calls: int, per_peer: int = PEER_SIDE_CALLS
    ) -> None:
        self.activity = activity
        self._side = SideCalls(side_calls, per_peer)
        threading.Thread(target=_watch, args=(weakref.ref(activity),), daemon=True).start()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        side = details.method.startswith(SIDE_SERVICES)
        for kind, wrap in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        ):
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                streaming = (handler.request_streaming, handler.response_streaming)
                return wrap(
                    self._guard(behaviour, streaming, side, handler.request_deserializer),
                    # Requests arrive as bytes and are parsed in the handler, see _decode.
                    request_deserializer=None,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _guard(
        self,
        behaviour: Callable,
        streaming: tuple[bool, bool],
        side: bool,
        deserialize: Callable[[bytes], Any] | None,
    ) -> Callable:
        activity = self.activity
        requests_stream, replies_stream = streaming
        capped = side and (requests_stream or replies_stream)  # a health Check is quick

        def received(messages: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            while True:
                activity.waiting(context)
                try:
                    message = next(messages)
                except StopIteration:
                    return
                finally:
                    activity.working(context)
                yield _decode(deserialize, message, context)

        def sent(replies: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            for reply in replies:
                activity.waiting(context)
                yield reply
                activity.working(context)

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            peer = peer_address(context.peer()) if capped else None
            if peer is not None and (refusal := self._side.acquire(peer)):
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            # Runs however the call ends, even if its replies are never read.
            if not context.add_callback(lambda: self._done(context, peer)):
                self._done(context, peer)
            if requests_stream:
                request = received(request, context)
            else:
                request = _decode(deserialize, request, context)
            reply = behaviour(request, context)
            return sent(reply, context) if replies_stream else reply

        return guarded

    def _done(self, context: grpc.ServicerContext, peer: str | None) -> None:
        self.activity.done(context)
        if peer is not None:
            self._side.release(peer)
