"""The province daemon: join the server, take tasks over a link (client/links.py), do them,
send the outcomes back.

The client always dials out (data owners sit behind firewalls). It waits with backoff while the
server is not up yet, rejoins if the server forgot it, and exits when told to stop.
"""

from __future__ import annotations

import logging
import random
import time

import grpc

from client.handshake import HandshakeCheck
from client.he import HEError
from client.links import TRANSPORTS, Link, StreamLink, UnaryLink
from client.local import LocalWork, Outcome
from client.privacy import PrivacyError
from client.receipts import Receipt, ReceiptBook
from client.tasks import ClientError, perform
from common.bounded import bounded
from common.secagg import DifferencingRefused, SecAggError
from common.tensors import Arrays, Payload
from common.wire import (
    CHANNEL_OPTIONS,
    PROTOCOL_VERSION,
    SESSION_METADATA_KEY,
    SOFTWARE_VERSION,
    STREAM_PROTOCOL_VERSION,
)
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc

log = logging.getLogger("fedstock.client")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
JOIN_DEADLINE_SECONDS = 10.0
# Codes after which the task is still open on the server, and how often to try it.
RESUBMITTABLE = RETRYABLE | {
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
SUBMIT_ATTEMPTS = 3
# Failures that mean this client cannot take part at all: reported, then the client exits
# (but for a refused sum, which only this task's: see DifferencingRefused).
FATAL = (ClientError, PrivacyError, HEError, SecAggError)


class Backoff:
    """Exponential backoff with jitter, giving up once `patience` seconds have passed."""

    def __init__(self, patience: float, first: float = 0.5, ceiling: float = 10.0) -> None:
        self.patience, self.first, self.ceiling = patience, first, ceiling
        self.reset()

    def reset(self) -> None:
        self._since = time.monotonic()
        self._delay = self.first

    def wait(self, why: str) -> None:
        if time.monotonic() - self._since > self.patience:
            raise ClientError(f"gave up after {self.patience:g} s: {why}")
        log.info("%s; retrying in %.1f s", why, self._delay)
        time.sleep(self._delay * random.uniform(0.8, 1.2))
        self._delay = min(self._delay * 2, self.ceiling)


def _failed(task: pb.Task, error: Exception) -> pb.Outcome:
    """The outcome that tells the server this task failed here, and why."""
    reason = bounded(f"{type(error).__name__}: {error}")
    return pb.Outcome(task_id=task.task_id, round=task.round, kind=task.kind, error=reason)


class ClientDaemon:
    def __init__(
        self,
        province: str,
        address: str,
        credentials: grpc.ChannelCredentials | None,
        work: LocalWork,
        connect_timeout: float,
        transfer_timeout: float,
        max_model_bytes: int,
        receipts: ReceiptBook | None = None,
        transport: str = "stream",
    ) -> None:
        self.province = province
        self.address = address
        self.credentials = credentials
        self.work = work
        self.connect_timeout = connect_timeout
        self.transfer_timeout = transfer_timeout
        self.max_model_bytes = max_model_bytes
        self.receipts = receipts
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
        self.transport = transport
        self._link: Link | None = None  # made by every join, for its session
        # The receipts the task in hand brought, kept to disk once its outcome is on its way.
        self._unkept: list[Receipt] = []

    def run(self) -> None:
        """Serve the federation until the server says stop."""
        with self.channel() as channel:
            stub = pb_grpc.FederationStub(channel)
            backoff = Backoff(self.connect_timeout)
            self._join(stub, backoff)
            try:
                self._serve(stub, backoff)
            finally:
                if self._link is not None:
                    self._link.close()

    def _serve(self, stub: pb_grpc.FederationStub, backoff: Backoff) -> None:
        """Do tasks until the server says stop."""
        while True:
            try:
                task, parameters = self._next_task()
            except grpc.RpcError as error:
                self._recover(stub, error, backoff)
                continue
            backoff.reset()
            self._unkept = self._check_receipts(task)
            try:
                if not self._handle(task, parameters):
                    return
            finally:
                self._keep_receipts()

    def _handle(self, task: pb.Task, parameters: Arrays | None) -> bool:
        """Do one task and send its outcome; False when the server says stop."""
        if task.kind == pb.TASK_KIND_STOP:
            if task.failed:
                raise ClientError(f"the federation failed: {task.reason}")
            log.info("server says stop: %s", task.reason or "no reason given")
            return False
        if task.kind == pb.TASK_KIND_WAIT:
            return True
        try:
            outcome = perform(self.work, task, parameters)
        except Exception as error:
            # The server hears why at once, instead of waiting out the deadline.
            log.exception("round %d: the task failed", task.round)
            self._send(task, _failed(task, error), None)
            if isinstance(error, FATAL) and not isinstance(error, DifferencingRefused):
                raise
            return True
        self._submit(task, outcome)
        return True

    def channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        return grpc.secure_channel(self.address, self.credentials, options=CHANNEL_OPTIONS)

    def _join(self, stub: pb_grpc.FederationStub, backoff: Backoff) -> None:
        request = pb.JoinRequest(
            province=self.province,
            rows=len(self.work.raw),
            software_version=SOFTWARE_VERSION,
            protocol_version=PROTOCOL_VERSION,
        )
        handshake = HandshakeCheck(self.address, secure=self.credentials is not None)
        while True:
            try:
                reply = stub.Join(request, timeout=JOIN_DEADLINE_SECONDS, wait_for_ready=False)
                break
            except grpc.RpcError as error:
                if error.code() not in RETRYABLE:
                    raise ClientError(
                        f"the server refused to let {self.province} join: {error.details()}"
                    ) from None
                mismatch = handshake.verdict(error.details() or "")
                if mismatch is not None:
                    raise ClientError(mismatch) from None
                backoff.wait(
                    f"server {self.address} not reachable ({error.code().name}: {error.details()})"
                )
        speaks = reply.protocol_version or 1
        if self.transport == "stream" and speaks < STREAM_PROTOCOL_VERSION:
            raise ClientError(
                f"the server at {self.address} speaks contract version {speaks} (Join, GetTask "
                f"and Submit only); this client's session stream needs version "
                f"{STREAM_PROTOCOL_VERSION}: upgrade the server, or start this client with "
                "--transport unary"
            )
        if self._link is not None:
            self._link.close()
        metadata = ((SESSION_METADATA_KEY, reply.session),)
        poll_seconds = reply.poll_seconds or 20.0
        self._link = (
            StreamLink(stub, metadata, self.max_model_bytes, min(speaks, PROTOCOL_VERSION))
            if self.transport == "stream"
            else UnaryLink(
                stub, metadata, poll_seconds, self.transfer_timeout, self.max_model_bytes
            )
        )
        backoff.reset()
        log.info(
            "%s joined server %s (version %s)", self.province, self.address, reply.server_version
        )

    def _recover(
        self, stub: pb_grpc.FederationStub, error: grpc.RpcError, backoff: Backoff
    ) -> None:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            log.warning("the server no longer knows this session; joining again")
            self._join(stub, backoff)
        elif error.code() in RETRYABLE or (
            self.transport == "stream" and error.code() == grpc.StatusCode.CANCELLED
        ):
            # A session stream also ends CANCELLED when the server gave up on it (idle, or a
            # refused upload it could not read to its end): a new one is opened.
            backoff.wait(f"lost the server ({error.code().name}: {error.details()})")
        else:
            raise ClientError(
                f"the server ended the task stream: {error.code().name}: {error.details()}"
            )

    def _next_task(self) -> tuple[pb.Task, Arrays | None]:
        return self._link.next_task()

    def _keep_receipts(self) -> None:
        """Flush the task's new receipts to disk: called once its outcome has left, while the
        server is busy with it, so the disk's flush is off the round's path."""
        if self._unkept:
            self.receipts.keep(self._unkept)
            self._unkept = []

    def _check_receipts(self, task: pb.Task) -> list[Receipt]:
        """The ledger receipts the task brings that are new; stop if the server contradicts
        one."""
        if self.receipts is None or not task.receipts:
            return []
        try:
            return self.receipts.check(
                Receipt.parse({"index": r.index, "hash": r.hash, "signature": r.signature})
                for r in task.receipts
            )
        except ValueError as error:  # ReceiptError included
            raise ClientError(f"refusing the server's ledger receipts: {error}") from None

    def _submit(self, task: pb.Task, outcome: Outcome) -> None:
        payload = Payload.encode(outcome.arrays) if outcome.arrays else None
        header = pb.Outcome(
            task_id=task.task_id,
            round=task.round,
            kind=task.kind,
            num_examples=outcome.num_examples,
            metrics=outcome.metrics,
            parameters=payload.header if payload else None,
        )
        self._send(task, header, payload)

    def _send(self, task: pb.Task, header: pb.Outcome, payload: Payload | None) -> None:
        # A broken or deferred upload leaves the task open on the server: send it again.
        for attempt in range(1, SUBMIT_ATTEMPTS + 1):
            try:
                self._link.submit(header, payload, self._keep_receipts)
                return
            except grpc.RpcError as error:
                log.warning(
                    "round %d: the server did not accept the outcome: %s: %s",
                    task.round,
                    error.code().name,
                    error.details(),
                )
                if error.code() not in RESUBMITTABLE or attempt == SUBMIT_ATTEMPTS:
                    return
                time.sleep(attempt * random.uniform(0.5, 1.5))
