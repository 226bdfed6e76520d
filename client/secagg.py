"""A province's side of secure aggregation: keys, encrypted shares, masked input, unmasking.

The protocol itself is common/secagg.py; this keeps one protocol client per round and turns
its messages into the tensors the server relays. With the province's certificate it signs its
keys and checks everyone else's before deriving a mask (common/keysign.py); without one (a
federation run --insecure) it warns that the keys are unauthenticated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import fields

import numpy as np

from common import secagg
from common.keysign import Identity, KeyAuthenticationError
from common.settings import RoundNumber
from common.tensors import Arrays
from common.vectors import flatten, unflatten
from common.wire import ConfigScalar

log = logging.getLogger("fedstock.client")


# The settings the server sends each client differently; an exchange's masks bind all others.
PER_CLIENT = {f.name for f in fields(secagg.Seat)}


def _indices(text: ConfigScalar) -> set[int]:
    return {int(i) for i in str(text).split(",") if i}


def _bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).copy()


def announcement(config: Mapping[str, ConfigScalar]) -> bytes:
    """The round's announcement (common/secagg.py) as the bytes every client's signatures
    cover: a server that announced different members, graphs or thresholds to different
    clients is caught."""
    announced = secagg.Announcement.from_config(config).signed()
    number = RoundNumber.sent(config)
    return json.dumps([str(number.round) if number else "", *announced]).encode()


def survivors_statement(context: bytes, survivors: set[int]) -> bytes:
    """What each survivor signs before any share is revealed: the one survivor set."""
    listed = ",".join(str(u) for u in sorted(survivors)).encode()
    return b"fedstock secagg survivors v1\0" + context + b"\0" + listed


class SecAggClient:
    def __init__(self, identity: Identity | None = None) -> None:
        self.identity = identity
        self._round = 0
        self._client: secagg.Client | None = None
        self._relay: dict[int, bytes] = {}
        self._context = b""
        self._sessions: set[str] = set()
        self._certificates: dict[int, bytes] = {}
        self._survivors: set[int] | None = None

    def _current(self, config: Mapping[str, ConfigScalar]) -> secagg.Client:
        if self._client is None or self._round != RoundNumber.from_config(config).round:
            raise secagg.SecAggError("a secure-aggregation step arrived out of order")
        if announcement(config) != self._context:
            raise secagg.SecAggError(
                f"round {self._round}: the server changed the round's announcement between "
                "steps; refusing to go on"
            )
        return self._client

    def keys(self, config: Mapping[str, ConfigScalar]) -> Arrays:
        """A fresh protocol client for this round; its two public keys, signed if it can."""
        announced = secagg.Announcement.from_config(config)
        number = RoundNumber.from_config(config).round
        session = announced.secagg_session
        if not session or session in self._sessions:
            raise secagg.SecAggError(
                f"round {number}: the server reuses a secure-aggregation session "
                f"({session or 'none'}); refusing a replayed round"
            )
        self._sessions.add(session)
        self._round = number
        index = secagg.Seat.from_config(config).secagg_index
        self._client = secagg.Client(
            index, announced.encoding(), announced.secagg_threshold, announced.graph(index)
        )
        self._relay, self._certificates, self._survivors = {}, {}, None
        self._context = announcement(config)
        keys = b"".join(self._client.advertise())
        if self.identity is None:
            log.warning(
                "round %d: secure-aggregation keys are UNAUTHENTICATED (no certificate, "
                "--insecure): the server could substitute its own and unmask updates",
                self._round,
            )
            signature, certificate = b"", b""
        else:
            signature = self.identity.sign(self._round, index, keys, self._context)
            certificate = self.identity.certificate
        return {
            "keys": _bytes(keys).reshape(2, 32),
            "signature": _bytes(signature),
            "certificate": _bytes(certificate),
        }

    def shares(self, config: Mapping[str, ConfigScalar], adverts: Arrays) -> Arrays:
        """One encrypted row for each neighbour in the adverts, in index order, once every
        advert is shown to come from the province announced for it."""
        protocol = self._current(config)
        keys, proofs = secagg.unpack_adverts(adverts)
        self._authenticate(config, keys, proofs)
        sealed = protocol.share(keys)
        rows = b"".join(sealed[v] for v in sorted(sealed))
        return {"shares": _bytes(rows).reshape(len(sealed), secagg.SEALED_BYTES)}

    def _authenticate(
        self,
        config: Mapping[str, ConfigScalar],
        adverts: dict[int, tuple[bytes, bytes]],
        proofs: dict[int, tuple[bytes, bytes]],
    ) -> None:
        if self.identity is None:
            return
        members = self._members(config)
        for index, keys in adverts.items():
            if not 1 <= index <= len(members):
                raise KeyAuthenticationError(
                    f"round {self._round}: keys relayed for client {index}, which is no member"
                )
            signature, certificate = proofs[index]
            self.identity.verify(
                self._round,
                index,
                members[index - 1],
                b"".join(keys),
                signature,
                certificate,
                self._context,
            )
            self._certificates[index] = certificate

    def _members(self, config: Mapping[str, ConfigScalar]) -> list[str]:
        members = (secagg.Announcement.from_config(config).secagg_members or "").split(",")
        own = secagg.Seat.from_config(config).secagg_index
        if self.identity is not None and (
            len(set(members)) != len(members) or members[own - 1 : own] != [self.identity.province]
        ):
            raise KeyAuthenticationError(
                f"round {self._round}: the server announces the members {members}, with "
                f"{self.identity.province} missing, misplaced or repeated; refusing the round"
            )
        return members

    def strip(self, parameters: Arrays) -> Arrays | None:
        """The global parameters without the shares relayed to this client, which it keeps."""
        senders, rows = parameters[secagg.SENDERS], parameters[secagg.SHARES]
        self._relay = {int(u): row.tobytes() for u, row in zip(senders, rows, strict=True)}
        rest = {k: v for k, v in parameters.items() if k not in (secagg.SENDERS, secagg.SHARES)}
        return rest or None

    def mask(self, arrays: Arrays, config: Mapping[str, ConfigScalar]) -> Arrays:
        """`arrays` masked, as int64 tensors of their shapes, with a last axis of limbs when the
        encoding is wide."""
        protocol = self._current(config)
        masked = protocol.masked_input(flatten(arrays), self._relay).view(np.int64)
        limbs = getattr(protocol.encoding, "limbs", 0)
        shapes = {k: (*np.shape(v), limbs) if limbs else np.shape(v) for k, v in arrays.items()}
        return unflatten(masked, {k: np.empty(shape) for k, shape in shapes.items()})

    def exchange(
        self, arrays: Arrays, config: Mapping[str, ConfigScalar], question: Arrays | None
    ) -> Arrays:
        """`arrays` masked for the task's exchange (int64 tensors of their shapes), the masks
        bound to `question` and the task's settings, so they cancel only if the server asked
        every member the same (common/secagg.py)."""
        protocol = self._current(config)
        asked = {k: v for k, v in config.items() if k not in PER_CLIENT}
        number = secagg.Exchange.from_config(config).secagg_exchange
        context = secagg.digest(question, asked)
        masked = protocol.exchange_input(flatten(arrays), self._relay, number, context)
        return unflatten(masked.view(np.int64), arrays)

    def unmask(
        self, config: Mapping[str, ConfigScalar], signatures: Arrays | None = None
    ) -> Arrays:
        """Step `confirm`: this client's signature on the survivor set the server announces.
        Step `reveal`: once every survivor is shown to have signed that same set, the shares
        that remove the masks (common/secagg.py checks that no client gets both kinds)."""
        protocol = self._current(config)
        unmasking = secagg.Unmasking.from_config(config)
        survivors = _indices(unmasking.secagg_survivors)
        statement = survivors_statement(self._context, survivors)
        if unmasking.secagg_step == "confirm":
            if self._survivors is not None:
                raise secagg.SecAggError(
                    f"round {self._round}: asked to confirm a second survivor set; refusing"
                )
            self._survivors = survivors
            signature = self.identity.sign_message(statement) if self.identity else b""
            return {"signature": _bytes(signature)}
        if survivors != self._survivors:
            raise secagg.SecAggError(
                f"round {self._round}: the survivors to unmask {sorted(survivors)} are not "
                f"those this client confirmed {sorted(self._survivors or ())}; refusing"
            )
        self._check_confirmations(config, statement, survivors, signatures or {})
        reply = protocol.unmask(survivors, _indices(unmasking.secagg_dropped))
        order = sorted(reply)
        rows = b"".join(reply[u].to_bytes(secagg.SHARE_BYTES) for u in order)
        shares = np.frombuffer(rows, dtype=np.uint8).reshape(len(order), secagg.SHARE_BYTES)
        return {"for": np.array(order, dtype=np.int64), "shares": shares.copy()}

    def _check_confirmations(
        self,
        config: Mapping[str, ConfigScalar],
        statement: bytes,
        survivors: set[int],
        relayed: Arrays,
    ) -> None:
        """More than half of the round's clients, all survivors, signed the survivor set this
        client signed. Two disjoint majorities cannot exist, so the server told every helper the
        same set, and no two helpers reveal different kinds of share for one client."""
        if self.identity is None:
            return
        members = self._members(config)
        signed = secagg.unpack_signatures(relayed)
        if not set(signed) <= survivors or len(signed) <= len(members) // 2:
            raise KeyAuthenticationError(
                f"round {self._round}: {len(signed)} confirmations of the survivors relayed, from "
                f"{sorted(signed)}: not a majority of the {len(members)} clients, all survivors; "
                "refusing to reveal any share (is the server tampering?)"
            )
        for u, signature in signed.items():
            self.identity.verify_message(
                statement,
                members[u - 1],
                signature,
                self._certificates.get(u, b""),
                f"round {self._round}: the survivor set confirmed as {members[u - 1]}'s",
                "reveal any share",
            )
