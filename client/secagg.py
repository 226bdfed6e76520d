"""A province's side of secure aggregation: keys, encrypted shares, masked input, unmasking.

The protocol itself is common/secagg.py; this keeps one protocol client per round and turns
its messages into the tensors the server relays. With the province's certificate it signs its
keys and checks everyone else's before deriving a mask (common/keysign.py); without one (a
federation run --insecure) it warns that the keys are unauthenticated.

Across rounds it remembers, for every input it has had unmasked, the provinces of the survivor
set it revealed its shares for, and reveals for the same input again only over that same set: a
server that asks the same phase twice (the round renumbered, a fresh session) over two survivor
sets would otherwise hold two sums of the same inputs, whose difference is the inputs of the
provinces between them. A server resumed from its checkpoint re-asks the round it lost with
the same inputs, and is answered if the same provinces survive.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from client.groups import TaskGroups
from common import secagg
from common.keysign import Identity, KeyAuthenticationError
from common.settings import RoundNumber
from common.tensors import Arrays
from common.vectors import flatten, unflatten

log = logging.getLogger("fedstock.client")


def _indices(text: str) -> set[int]:
    return {int(i) for i in str(text).split(",") if i}


def _bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8).copy()


def announcement(groups: TaskGroups) -> bytes:
    """The round's announcement (common/secagg.py) as the bytes every client's signatures
    cover: a server that announced different members, graphs or thresholds to different
    clients is caught."""
    announced = groups.need(secagg.Announcement).signed()
    number = groups.number
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
        # The digest of this round's masked input; and of every input unmasked so far, the
        # provinces it was unmasked over (kept for the daemon's life).
        self._input: bytes | None = None
        self._unmasked: dict[bytes, frozenset[str]] = {}

    def _current(self, groups: TaskGroups) -> secagg.Client:
        if self._client is None or self._round != groups.need(RoundNumber).round:
            raise secagg.SecAggError("a secure-aggregation step arrived out of order")
        if announcement(groups) != self._context:
            raise secagg.SecAggError(
                f"round {self._round}: the server changed the round's announcement between "
                "steps; refusing to go on"
            )
        return self._client

    def keys(self, groups: TaskGroups) -> Arrays:
        """A fresh protocol client for this round; its two public keys, signed if it can."""
        announced = groups.need(secagg.Announcement)
        number = groups.need(RoundNumber).round
        session = announced.secagg_session
        if not session or session in self._sessions:
            raise secagg.SecAggError(
                f"round {number}: the server reuses a secure-aggregation session "
                f"({session or 'none'}); refusing a replayed round"
            )
        self._sessions.add(session)
        self._round = number
        index = groups.need(secagg.Seat).secagg_index
        self._client = secagg.Client(
            index, announced.encoding(), announced.secagg_threshold, announced.graph(index)
        )
        self._relay, self._certificates, self._survivors, self._input = {}, {}, None, None
        self._context = announcement(groups)
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

    def shares(self, groups: TaskGroups, adverts: Arrays) -> Arrays:
        """One encrypted row for each neighbour in the adverts, in index order, once every
        advert is shown to come from the province announced for it."""
        protocol = self._current(groups)
        keys, proofs = secagg.unpack_adverts(adverts)
        self._authenticate(groups, keys, proofs)
        sealed = protocol.share(keys)
        rows = b"".join(sealed[v] for v in sorted(sealed))
        return {"shares": _bytes(rows).reshape(len(sealed), secagg.SEALED_BYTES)}

    def _authenticate(
        self,
        groups: TaskGroups,
        adverts: dict[int, tuple[bytes, bytes]],
        proofs: dict[int, tuple[bytes, bytes]],
    ) -> None:
        if self.identity is None:
            return
        members = self._members(groups)
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

    def _members(self, groups: TaskGroups) -> list[str]:
        members = (groups.need(secagg.Announcement).secagg_members or "").split(",")
        own = groups.need(secagg.Seat).secagg_index
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

    def mask(self, arrays: Arrays, groups: TaskGroups) -> Arrays:
        """`arrays` masked, as int64 tensors of their shapes, with a last axis of limbs when the
        encoding is wide."""
        protocol = self._current(groups)
        self._input = secagg.digest(arrays, {})
        masked = protocol.masked_input(flatten(arrays), self._relay).view(np.int64)
        limbs = getattr(protocol.encoding, "limbs", 0)
        shapes = {k: (*np.shape(v), limbs) if limbs else np.shape(v) for k, v in arrays.items()}
        return unflatten(masked, {k: np.empty(shape) for k, shape in shapes.items()})

    def exchange(self, arrays: Arrays, groups: TaskGroups, question: Arrays | None) -> Arrays:
        """`arrays` masked for the task's exchange (int64 tensors of their shapes), the masks
        bound to `question` and the task's settings, so they cancel only if the server asked
        every member the same (common/secagg.py)."""
        protocol = self._current(groups)
        exchange = groups.need(secagg.Exchange)
        context = secagg.digest(question, dict(groups.shared))
        masked = protocol.exchange_input(
            flatten(arrays), self._relay, exchange.secagg_exchange, context, exchange.left()
        )
        return unflatten(masked.view(np.int64), arrays)

    def unmask(self, groups: TaskGroups, signatures: Arrays | None = None) -> Arrays:
        """Step `confirm`: this client's signature on the survivor set the server announces.
        Step `reveal`: once every survivor is shown to have signed that same set, the shares
        that remove the masks (common/secagg.py checks that no client gets both kinds)."""
        protocol = self._current(groups)
        unmasking = groups.need(secagg.Unmasking)
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
        self._check_confirmations(groups, statement, survivors, signatures or {})
        self._check_not_differenced(groups, survivors)
        reply = protocol.unmask(survivors, _indices(unmasking.secagg_dropped))
        order = sorted(reply)
        rows = b"".join(reply[u].to_bytes(secagg.SHARE_BYTES) for u in order)
        shares = np.frombuffer(rows, dtype=np.uint8).reshape(len(order), secagg.SHARE_BYTES)
        return {"for": np.array(order, dtype=np.int64), "shares": shares.copy()}

    def _check_not_differenced(self, groups: TaskGroups, survivors: set[int]) -> None:
        """This round's input unmasked over no other provinces than before, if it was before."""
        if self._input is None:
            return
        members = self._members(groups)
        named = frozenset(members[u - 1] for u in survivors if 0 < u <= len(members))
        before = self._unmasked.setdefault(self._input, named)
        if before != named:
            raise secagg.DifferencingRefused(
                f"round {self._round}: asked to unmask an input this client had unmasked "
                f"before over {sorted(before)}, now over {sorted(named)}: the two sums' "
                "difference would give away the provinces between them; refusing"
            )

    def _check_confirmations(
        self,
        groups: TaskGroups,
        statement: bytes,
        survivors: set[int],
        relayed: Arrays,
    ) -> None:
        """More than half of the round's clients, all survivors, signed the survivor set this
        client signed. Two disjoint majorities cannot exist, so the server told every helper the
        same set, and no two helpers reveal different kinds of share for one client."""
        if self.identity is None:
            return
        members = self._members(groups)
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
