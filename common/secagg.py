"""Secure aggregation (Bonawitz et al., CCS 2017): the server learns the sum of the updates only.

Each pair of clients u < v agrees a seed s_uv by X25519 through the server; u adds PRG(s_uv)
and v subtracts it, so pairwise masks cancel in the sum. A self mask PRG(b_u) hides u's input
even if the server wrongly says u dropped. Both b_u and u's mask key are Shamir-shared among
the clients (any `threshold` shares rebuild them), each share encrypted for its holder, so the
survivors can help remove the masks of clients that drop out: b_u of those whose input
arrived, the mask key of those whose input did not; never both for one client. Inputs are
fixed-point integers in Z_2^k, with k wide enough that the sum of N bounded inputs never wraps.

SecAgg+ (Bell et al., CCS 2020) is the same protocol on a sparse graph: each client masks with
and shares its secrets among only its neighbours on a k-regular graph that the server
announces by its seed, so a client's work grows with k, not N, and `threshold` counts shares
within one neighbourhood (the client and its k neighbours).

Exchanges (`Client.exchange_input`, `exchange_sum`) reuse one key agreement for many sums, as a
tree's histograms need one sum per depth level: each input carries only pairwise masks, derived
from the pair's seed, the exchange's number and a digest of what the exchange asked, so no mask
is used twice and the masks cancel only if every member was asked the same question. There is
no self mask and nothing to unmask: the sum is exact only over every member, so an exchange that
misses one cannot be summed, and no share is ever revealed for it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.settings import TaskSettings
from common.wire import ConfigScalar

# A Mersenne prime above every 32-byte secret: Shamir's shares live in this field.
PRIME = (1 << 521) - 1
SHARE_BYTES = 66
RAW = serialization.Encoding.Raw


class SecAggError(RuntimeError):
    """The protocol cannot go on safely: too few survivors, or a request that would leak."""


class DifferencingRefused(SecAggError):
    """A sum whose difference with one this client helped unmask before would give away the
    provinces between them. An honest server asks for one after a province drops out, so the
    client refuses this sum and goes on with the federation."""


@dataclass(frozen=True)
class Encoding:
    """Fixed point in Z_2^k: |value| ≤ bound in steps of 2^-fraction_bits, for `clients` inputs."""

    bound: float
    clients: int
    fraction_bits: int = 24

    @property
    def bits(self) -> int:
        """Magnitude bits, a sign bit, and log2(clients) bits of headroom for the sum."""
        magnitude = math.ceil(math.log2(self.bound * (1 << self.fraction_bits) + 1))
        bits = magnitude + 1 + math.ceil(math.log2(max(self.clients, 2)))
        if bits > 62:
            raise ValueError(f"{bits} bits needed; lower the bound or the fraction bits")
        return bits

    @property
    def mask(self) -> np.uint64:
        return np.uint64((1 << self.bits) - 1)

    def encode(self, values: np.ndarray) -> np.ndarray:
        if np.abs(values).max(initial=0.0) > self.bound:
            raise ValueError(f"a value exceeds the encoding's bound {self.bound}")
        integers = np.round(np.asarray(values, np.float64) * (1 << self.fraction_bits))
        return integers.astype(np.int64).view(np.uint64) & self.mask

    def decode(self, total: np.ndarray) -> np.ndarray:
        ring = (total & self.mask).astype(np.int64)
        signed = np.where(ring >= 1 << (self.bits - 1), ring - (1 << self.bits), ring)
        return signed / float(1 << self.fraction_bits)


@dataclass(frozen=True)
class WideEncoding:
    """Fixed point for sums too wide for one ring element, such as Σzzᵀ of turnover in yuan
    (10²⁵ and more): each value's residue modulo 2^(limb_bits·limbs) in limbs of `limb_bits`,
    each limb its own element of a ring with room for `clients` of them. Limbs add without
    carrying, so the carries are resolved after unmasking, in `decode`."""

    clients: int
    limbs: int = 5
    limb_bits: int = 30
    fraction_bits: int = 16

    @property
    def bits(self) -> int:
        return self.limb_bits + math.ceil(math.log2(max(self.clients, 2)))

    @property
    def mask(self) -> np.uint64:
        return np.uint64((1 << self.bits) - 1)

    @property
    def _width(self) -> int:
        return self.limb_bits * self.limbs

    def encode(self, values: np.ndarray) -> np.ndarray:
        headroom = self._width - 1 - math.ceil(math.log2(max(self.clients, 2)))
        limb = (1 << self.limb_bits) - 1
        out = []
        for value in np.asarray(values, np.float64).ravel():
            if not math.isfinite(value):
                raise ValueError("a value to encode is not finite")
            integer = round(float(value) * (1 << self.fraction_bits))
            if abs(integer) >= 1 << headroom:
                raise ValueError(f"a value exceeds the wide encoding's {headroom} bits")
            residue = integer % (1 << self._width)
            out += [(residue >> (self.limb_bits * j)) & limb for j in range(self.limbs)]
        return np.array(out, dtype=np.uint64)

    def decode(self, total: np.ndarray) -> np.ndarray:
        limbs = (total & self.mask).reshape(-1, self.limbs)
        values = []
        for row in limbs:
            residue = sum(int(x) << (self.limb_bits * j) for j, x in enumerate(row))
            residue %= 1 << self._width
            signed = residue - (1 << self._width) if residue >= 1 << (self._width - 1) else residue
            values.append(signed / float(1 << self.fraction_bits))
        return np.array(values, dtype=np.float64)


@dataclass(frozen=True)
class Announcement(TaskSettings):
    """What the server announces for a round of the protocol, the same to every client: a
    fresh session, the members in index order, their number, the neighbour graph (k, 0 for
    everyone; its seed), the threshold, and the fixed point's bound and encoding. Every client
    signs its keys over all of it, so a server that told clients different rounds is caught.
    The members, encoding (bounded unless 'wide') and graph (everyone unless k > 0) may be
    left unannounced."""

    secagg_session: str
    secagg_clients: int
    secagg_threshold: int
    secagg_bound: float
    secagg_members: str | None = None
    secagg_encoding: str | None = None
    secagg_neighbours: int | None = None
    secagg_graph_seed: int | None = None

    def signed(self) -> list[str]:
        """Its settings as text, in the order every client has always signed them (an
        unannounced one as empty text)."""
        values = [
            self.secagg_session,
            self.secagg_members,
            self.secagg_clients,
            self.secagg_neighbours,
            self.secagg_graph_seed,
            self.secagg_threshold,
            self.secagg_bound,
            self.secagg_encoding,
        ]
        return ["" if value is None else str(value) for value in values]

    def graph(self, index: int) -> frozenset[int] | None:
        """Client `index`'s neighbours in the announced graph; None: every other client."""
        if not self.secagg_neighbours:
            return None
        if self.secagg_graph_seed is None:
            raise SecAggError("the round announces a neighbour graph without its seed")
        return neighbours(self.secagg_clients, self.secagg_neighbours, self.secagg_graph_seed)[
            index
        ]

    def encoding(self) -> Encoding | WideEncoding:
        """The round's fixed point: `wide` for the statistics' sums, else bounded by the bound."""
        if self.secagg_encoding == "wide":
            return WideEncoding(self.secagg_clients)
        return Encoding(self.secagg_bound, self.secagg_clients)


@dataclass(frozen=True)
class Seat(TaskSettings):
    """A client's own index in the round: the one setting the server sends each differently."""

    secagg_index: int


@dataclass(frozen=True)
class Unmasking(TaskSettings):
    """The unmasking: the survivors whose inputs are summed and the clients who dropped (lists
    of indices), and its step, `confirm` the survivor set or `reveal` the shares."""

    secagg_survivors: str
    secagg_dropped: str
    secagg_step: str


@dataclass(frozen=True)
class Exchange(TaskSettings):
    """One of many sums under one key agreement (the trees' histograms), by its number, and
    the members who have left since the keys were agreed (indices, comma-separated; None: no
    one), whose masks the survivors no longer add."""

    secagg_exchange: int
    secagg_left: str | None = None

    def left(self) -> frozenset[int]:
        return frozenset(int(i) for i in (self.secagg_left or "").split(",") if i)


def encoding_for(config: Mapping[str, ConfigScalar]) -> Encoding | WideEncoding:
    """The fixed point of the round a task's config announces."""
    return Announcement.from_config(config).encoding()


def prg(seed: bytes, size: int, encoding: Encoding | WideEncoding) -> np.ndarray:
    """`size` uniform elements of Z_2^k from a 32-byte seed (the ChaCha20 keystream)."""
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * size)), dtype=np.uint64) & encoding.mask


def exchange_seed(seed: bytes, exchange: int, context: bytes) -> bytes:
    """A pair's seed for one exchange: fresh for every exchange number and question asked."""
    info = b"fedstock secagg exchange v1\0" + exchange.to_bytes(8) + b"\0" + context
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(seed)


def digest(arrays: Mapping[str, np.ndarray] | None, config: Mapping[str, object]) -> bytes:
    """What an exchange asked, as bytes: every tensor (name, dtype, shape, data) and setting."""
    h = hashes.Hash(hashes.SHA256())
    for name in sorted(arrays or {}):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        h.update(array.tobytes())
    h.update(repr(sorted((str(k), str(v)) for k, v in config.items())).encode())
    return h.finalize()


def agree(private: X25519PrivateKey, public: bytes, label: bytes) -> bytes:
    shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    return HKDF(hashes.SHA256(), 32, salt=None, info=label).derive(shared)


def split(secret: int, holders: list[int], threshold: int) -> dict[int, int]:
    """Shamir shares of `secret` for each holder index (> 0): any `threshold` rebuild it."""
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {
        x: sum(c * pow(x, i, PRIME) for i, c in enumerate(coefficients)) % PRIME for x in holders
    }


def combine(shares: dict[int, int]) -> int:
    """The secret from shares by Lagrange interpolation at zero."""
    secret = 0
    for x, y in shares.items():
        others = [o for o in shares if o != x]
        numerator = math.prod(-o for o in others) % PRIME
        denominator = math.prod(x - o for o in others) % PRIME
        secret += y * numerator * pow(denominator, -1, PRIME)
    return secret % PRIME


Graph = dict[int, frozenset[int]]  # each client's neighbours


def neighbours(n: int, k: int, seed: int) -> Graph:
    """A k-regular graph on clients 1..n, the same for all who know the seed: the clients in a
    seeded random order round a ring, each joined to the k/2 nearest on either side.
    k ≥ n − 1 gives the complete graph."""
    if k <= 0 or k % 2:
        raise ValueError(f"a neighbourhood size must be a positive even number, not {k}")
    everyone = frozenset(range(1, n + 1))
    if k >= n - 1:
        return {u: everyone - {u} for u in everyone}
    ring = [int(u) for u in np.random.default_rng(seed).permutation(n) + 1]
    reach = range(-(k // 2), k // 2 + 1)
    return {u: frozenset(ring[(i + d) % n] for d in reach if d) for i, u in enumerate(ring)}


def _pair(u: int, v: int) -> bytes:
    return f"{min(u, v)}-{max(u, v)}".encode()


@dataclass
class Client:
    """One client's side of one round; `index` is its position among the round's clients (≥ 1),
    `neighbours` those it masks with (None: all)."""

    index: int
    encoding: Encoding | WideEncoding
    threshold: int
    neighbours: frozenset[int] | None = None
    _cipher_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    _mask_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    _self_seed: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _held: dict[int, tuple[int, int]] = field(default_factory=dict)
    _exchange: int = 0  # the last exchange number masked
    _peers: frozenset[int] = frozenset()  # whom the exchanges mask with, as agreed
    _left: frozenset[int] = frozenset()  # peers who have left since: masked with no more
    _seeds: dict[int, bytes] = field(default_factory=dict)

    def advertise(self) -> tuple[bytes, bytes]:
        """The public keys the server relays: one to encrypt shares, one to agree masks."""
        return (
            self._cipher_key.public_key().public_bytes_raw(),
            self._mask_key.public_key().public_bytes_raw(),
        )

    def __post_init__(self) -> None:
        group = self.encoding.clients if self.neighbours is None else len(self.neighbours) + 1
        if not group / 2 < self.threshold <= group:
            raise SecAggError(
                f"a threshold of {self.threshold} in a group of {group} is unsafe: it must be a "
                "majority, or a server that splits the group could rebuild both secrets of one "
                "client from the two halves"
            )
        self._step = "advertised"

    def _advance(self, expected: str, step: str) -> None:
        """Each step once, in order: a server that replays one learns nothing new."""
        if self._step != expected:
            raise SecAggError(
                f"refusing to {step} after {self._step!r}: each step runs once per round, "
                "in order (a replayed or out-of-order step)"
            )
        self._step = step

    def share(self, adverts: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """Shares of the self seed and the mask key, encrypted for each neighbour that is in."""
        if adverts.get(self.index) != self.advertise():
            raise SecAggError(f"the keys relayed for client {self.index} are not this client's")
        holders = sorted(
            v for v in adverts if v == self.index or self.neighbours is None or v in self.neighbours
        )
        if len(holders) < self.threshold:
            raise SecAggError(f"{len(holders)} clients cannot meet a threshold of {self.threshold}")
        self._advance("advertised", "share")
        self._adverts, self._group = adverts, frozenset(holders)
        seeds = split(int.from_bytes(self._self_seed), holders, self.threshold)
        key = int.from_bytes(self._mask_key.private_bytes_raw())
        keys = split(key, holders, self.threshold)
        self._held[self.index] = (seeds[self.index], keys[self.index])
        return {
            v: self._box(v).encrypt(
                nonce := secrets.token_bytes(12),
                seeds[v].to_bytes(SHARE_BYTES) + keys[v].to_bytes(SHARE_BYTES),
                _pair(self.index, v),
            )
            + nonce
            for v in holders
            if v != self.index
        }

    def _box(self, other: int) -> AESGCM:
        return AESGCM(agree(self._cipher_key, self._adverts[other][0], b"shares"))

    def masked_input(self, values: np.ndarray, shares: dict[int, bytes]) -> np.ndarray:
        """The encoded input plus the self mask and the pairwise masks: uniform to the server.

        Only once a round, and only with at least `threshold` − 1 peers that shared with it:
        a server that relayed fewer could unmask the input by claiming those peers dropped."""
        self._check_peers(shares)
        self._advance("share", "mask")
        self._open_shares(shares)
        encoded = self.encoding.encode(values)
        total = encoded + prg(self._self_seed, len(encoded), self.encoding)
        # Masks pair this client with those whose shares it holds: the clients still in.
        return self._pairwise(total, {v: self._seed(v) for v in shares})

    def exchange_input(
        self,
        values: np.ndarray,
        shares: dict[int, bytes],
        exchange: int,
        context: bytes,
        left: frozenset[int] = frozenset(),
    ) -> np.ndarray:
        """The encoded input plus pairwise masks for exchange number `exchange` on the question
        whose digest is `context`: many exchanges under one key agreement, each number once and
        rising, so a server that asks twice under one number (two inputs, one mask) is refused.
        No self mask and no unmasking: only the sum over every peer in `shares` and this
        client is clear (`exchange_sum`), and after exchanges this client reveals no share.

        `left` are the peers the server says have left (a province whose session ended
        mid-round): their masks are no longer added, so the survivors' inputs sum. The set
        only grows, and the survivors with this client must still meet the threshold; it is
        in the question's digest, so a server that told members different sets gets noise."""
        self._check_peers(shares)
        if exchange <= self._exchange:
            raise SecAggError(
                f"refusing exchange {exchange} after exchange {self._exchange}: each exchange "
                "number masks one input, once (a replayed or reordered exchange)"
            )
        if self._step == "share":
            self._open_shares(shares)
            self._peers = frozenset(shares)
        elif self._step != "exchange" or frozenset(shares) != self._peers:
            raise SecAggError(
                f"refusing an exchange after {self._step!r} or with other peers: exchanges "
                "follow the key agreement and mask with the same peers throughout"
            )
        staying = self._peers - left
        if self.index in left or not self._left <= left or len(staying) + 1 < self.threshold:
            raise SecAggError(
                f"refusing an exchange whose members who left, {sorted(left)}, name this "
                f"client, forget the earlier ones {sorted(self._left)}, or leave fewer peers "
                f"than the threshold of {self.threshold} needs"
            )
        self._step, self._exchange, self._left = "exchange", exchange, left
        seeds = {v: exchange_seed(self._seed(v), exchange, context) for v in staying}
        return self._pairwise(self.encoding.encode(values), seeds)

    def _check_peers(self, shares: dict[int, bytes]) -> None:
        strangers = sorted(set(shares) - getattr(self, "_group", frozenset()) - {self.index})
        if strangers or len(shares) + 1 < self.threshold:
            raise SecAggError(
                f"refusing to mask with the {len(shares)} peers relayed (unknown: {strangers}): "
                f"fewer than the threshold of {self.threshold} with this client, so the server "
                "could remove every mask but its own; is the server deviating?"
            )

    def _open_shares(self, shares: dict[int, bytes]) -> None:
        for u, sealed in shares.items():
            plain = self._box(u).decrypt(sealed[-12:], sealed[:-12], _pair(u, self.index))
            self._held[u] = (
                int.from_bytes(plain[:SHARE_BYTES]),
                int.from_bytes(plain[SHARE_BYTES:]),
            )

    def _seed(self, other: int) -> bytes:
        """The pair's seed, agreed once: exchanges derive theirs from it."""
        if other not in self._seeds:
            self._seeds[other] = agree(
                self._mask_key, self._adverts[other][1], _pair(self.index, other)
            )
        return self._seeds[other]

    def _pairwise(self, total: np.ndarray, seeds: dict[int, bytes]) -> np.ndarray:
        """`total` plus the mask of each pair: added by the lower index, subtracted by the
        higher, so that they cancel in the sum."""
        for v, seed in seeds.items():
            mask = prg(seed, len(total), self.encoding)
            total = total + mask if self.index < v else total - mask
        return total & self.encoding.mask

    def unmask(self, survivors: set[int], dropped: set[int]) -> dict[int, int]:
        """Shares of self seeds for `survivors` and of mask keys for `dropped` among the clients
        whose shares it holds; never both for one client, and only once a round."""
        unsafe = survivors & dropped or self.index not in survivors
        if unsafe or len(survivors & self._held.keys()) < self.threshold:
            raise SecAggError(
                "refusing to unmask: the server's survivor and dropout sets are unsafe"
            )
        self._advance("mask", "unmask")
        seeds = {u: self._held[u][0] for u in survivors if u in self._held}
        return seeds | {u: self._held[u][1] for u in dropped if u in self._held}


def aggregate(
    encoding: Encoding | WideEncoding,
    threshold: int,
    adverts: dict[int, tuple[bytes, bytes]],
    masked: dict[int, np.ndarray],
    replies: dict[int, dict[int, int]],
    graph: Graph | None = None,
) -> np.ndarray:
    """The server's part: the sum of the survivors' inputs, from masked inputs and replies."""
    size = len(next(iter(masked.values())))
    total = sum(masked.values(), np.zeros(size, np.uint64))
    for u in masked:
        seed = _rebuild(u, threshold, replies)
        total = total - prg(seed.to_bytes(32), size, encoding)
    for u in set(adverts) - set(masked):
        private = X25519PrivateKey.from_private_bytes(_rebuild(u, threshold, replies).to_bytes(32))
        for v in masked:
            if graph is not None and v not in graph[u]:
                continue  # v never masked with u
            mask = prg(agree(private, adverts[v][1], _pair(u, v)), size, encoding)
            # v added this mask if v < u and subtracted it otherwise: undo what v did.
            total = total - mask if v < u else total + mask
    return encoding.decode(total & encoding.mask)


def exchange_sum(encoding: Encoding | WideEncoding, masked: list[np.ndarray]) -> np.ndarray:
    """The sum of one exchange's inputs from every member: their pairwise masks cancel."""
    total = sum(masked, np.zeros(len(masked[0]), np.uint64))
    return encoding.decode(total & encoding.mask)


def _rebuild(u: int, threshold: int, replies: dict[int, dict[int, int]]) -> int:
    """Client u's secret from the first `threshold` replies that hold a share of it."""
    shares = {v: reply[u] for v, reply in replies.items() if u in reply}
    if len(shares) < threshold:
        raise SecAggError(
            f"only {len(shares)} clients helped unmask client {u}; {threshold} are needed"
        )
    return combine(dict(list(shares.items())[:threshold]))


# How the protocol's messages travel as tensors (server/privacy/secagg.py, client/secagg.py).
WEIGHT = "secagg_weight"
SENDERS = "secagg_senders"
SHARES = "secagg_shares"
SEALED_BYTES = 2 * SHARE_BYTES + 16 + 12  # two shares, the AES-GCM tag and the nonce


def pack_adverts(
    adverts: dict[int, tuple[bytes, bytes]], proofs: dict[int, tuple[bytes, bytes]]
) -> dict[str, np.ndarray]:
    """Every client's keys and their proof (signature, certificate; empty when unsigned)."""
    order = sorted(adverts)
    keys = np.frombuffer(b"".join(b"".join(adverts[i]) for i in order), dtype=np.uint8)
    signatures, signature_ends = _ragged([proofs[i][0] for i in order])
    certificates, certificate_ends = _ragged([proofs[i][1] for i in order])
    return {
        "index": np.array(order, dtype=np.int64),
        "keys": keys.reshape(len(order), 2, 32),
        "signatures": signatures,
        "signature_ends": signature_ends,
        "certificates": certificates,
        "certificate_ends": certificate_ends,
    }


def unpack_adverts(
    arrays: dict[str, np.ndarray],
) -> tuple[dict[int, tuple[bytes, bytes]], dict[int, tuple[bytes, bytes]]]:
    """The adverts and proofs `pack_adverts` packed, by client index."""
    order = [int(i) for i in arrays["index"]]
    adverts = {
        i: (keys[0].tobytes(), keys[1].tobytes())
        for i, keys in zip(order, arrays["keys"], strict=True)
    }
    signatures = _unragged(arrays["signatures"], arrays["signature_ends"], len(order))
    certificates = _unragged(arrays["certificates"], arrays["certificate_ends"], len(order))
    proofs = dict(zip(order, zip(signatures, certificates, strict=True), strict=True))
    return adverts, proofs


def pack_signatures(signatures: dict[int, bytes]) -> dict[str, np.ndarray]:
    """Each survivor's signature on the survivor set, by client index, for every survivor."""
    order = sorted(signatures)
    flat, ends = _ragged([signatures[i] for i in order])
    return {"index": np.array(order, dtype=np.int64), "signatures": flat, "signature_ends": ends}


def unpack_signatures(arrays: dict[str, np.ndarray]) -> dict[int, bytes]:
    try:
        order = [int(i) for i in arrays["index"]]
        flat, ends = arrays["signatures"], arrays["signature_ends"]
    except KeyError:
        raise SecAggError("the relayed survivor confirmations are malformed") from None
    return dict(zip(order, _unragged(flat, ends, len(order)), strict=True))


def _ragged(items: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings of any length as one uint8 tensor and the int64 end of each."""
    ends = np.cumsum([len(item) for item in items], dtype=np.int64)
    return np.frombuffer(b"".join(items), dtype=np.uint8).copy(), ends


def _unragged(flat: np.ndarray, ends: np.ndarray, count: int) -> list[bytes]:
    last = int(ends[-1]) if len(ends) else 0
    if len(ends) != count or np.any(np.diff(ends, prepend=0) < 0) or last != len(flat):
        raise SecAggError("the relayed key proofs are malformed")
    starts = [0, *ends[:-1]]
    return [flat[int(a) : int(b)].tobytes() for a, b in zip(starts, ends, strict=True)]


def join_input(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """A masked input's tensors (int64 on the wire) as one ring vector, in sorted name order."""
    return np.concatenate([np.ravel(arrays[name]) for name in sorted(arrays)]).view(np.uint64)
