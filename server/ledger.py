"""An append-only, hash-chained, signed record of the rounds that any province can check.

One JSON object per line. Each entry carries the hash of the previous one, the certificate of
the key that signed it, its own hash over its canonical form and a signature over that hash.
A hash chain alone can be recomputed by whoever edits it; the signature ties every entry to the
server's key (under mutual TLS the server's certificate from the federation's CA; with
`--insecure` a key the run creates), and the receipts every province keeps (client/receipts.py)
tie it to what the server told the provinces at the time, which catches even a ledger re-chained
and re-signed with a leaked key.

`python -m server.ledger verify FILE [--head HASH] [--ca CA.pem] [--receipts DIR]` checks a
ledger, and model.npz beside it, and names the first bad entry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from client.receipts import Receipt, ReceiptError, read_receipts
from common.tensors import Payload
from common.tls import TLSSetupError, read_pem
from server.certs import Authority

log = logging.getLogger("fedstock.server")
GENESIS = "0" * 64
SIGNATURE = ec.ECDSA(hashes.SHA256())
UNSIGNED_FIELDS = ("hash", "signature")


class LedgerError(ValueError):
    """A ledger that does not verify; the message names the first bad entry."""


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 of the entry's canonical JSON, everything but its hash and signature."""
    body = {k: v for k, v in entry.items() if k not in UNSIGNED_FIELDS}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def signed_message(digest: str) -> bytes:
    """What the signature covers: the entry's hash, under a label no other signature uses."""
    return b"fedstock ledger entry v1\0" + digest.encode()


@dataclass(frozen=True)
class Signer:
    """The key that signs every entry, and the certificate the entries record for it."""

    key: ec.EllipticCurvePrivateKey
    certificate: str  # PEM

    @classmethod
    def load(cls, folder: Path) -> Signer:
        """The server's mutual-TLS identity: server.key and server.pem from the federation's CA."""
        key = serialization.load_pem_private_key(read_pem(folder, "server.key"), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TLSSetupError(f"{folder / 'server.key'} is not an elliptic-curve key")
        return cls(key, read_pem(folder, "server.pem").decode())

    @classmethod
    def ephemeral(cls) -> Signer:
        """A key this run creates and forgets (--insecure): entries are still signed, but by a
        certificate no federation CA issued, which `verify --ca` reports."""
        authority = Authority.create("fedstock run without TLS (throwaway CA)", days=3650)
        key_pem, certificate = authority.issue("fedstock ledger signer", (), client=False)
        key = serialization.load_pem_private_key(key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(key, certificate.decode())

    def sign(self, digest: str) -> str:
        return base64.b64encode(self.key.sign(signed_message(digest), SIGNATURE)).decode()


def _reject_constant(name: str) -> None:
    raise LedgerError(f"holds {name}, which is not a number (the ledger never writes one)")


def _check_signature(entry: dict[str, Any], authority: x509.Certificate | None) -> None:
    """Raises LedgerError unless the entry's certificate signed its hash (and, with an
    authority, that certificate is the federation's server certificate)."""
    if "signature" not in entry or "certificate" not in entry:
        raise LedgerError(
            "is unsigned (a ledger written before entries were signed, or one whose signatures "
            "were stripped): it proves nothing"
        )
    certificate = x509.load_pem_x509_certificate(str(entry["certificate"]).encode())
    if authority is not None:
        try:
            certificate.verify_directly_issued_by(authority)
        except (ValueError, TypeError, InvalidSignature):
            raise LedgerError("is signed by a certificate the given CA did not issue") from None
        try:
            usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.SERVER_AUTH not in usages:
            raise LedgerError(
                "is signed by a certificate the CA issued to a client, not the server"
            )
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise LedgerError("is signed by a certificate without an elliptic-curve key")
    try:
        signature = base64.b64decode(str(entry["signature"]), validate=True)
        public.verify(signature, signed_message(entry["hash"]), SIGNATURE)
    except (binascii.Error, InvalidSignature):
        raise LedgerError("has a signature that does not match its content") from None


def _check_entry(
    line: str, number: int, previous: str, authority: x509.Certificate | None
) -> dict[str, Any]:
    entry = json.loads(line, parse_constant=_reject_constant)
    if not isinstance(entry, dict):
        raise LedgerError("is not a JSON object")
    if entry.get("index") != number:
        raise LedgerError(f"has index {entry.get('index')!r}: entries are missing or out of order")
    if not isinstance(entry.get("round"), int) or isinstance(entry["round"], bool):
        raise LedgerError(f"has round {entry.get('round')!r}, not a whole number")
    if entry.get("previous") != previous:
        raise LedgerError("does not follow the entry before it (previous hash differs)")
    if entry.get("hash") != entry_hash(entry):
        raise LedgerError("was altered: its content does not match its hash")
    _check_signature(entry, authority)
    return entry


def where(number: int) -> str:
    return f"entry {number} (line {number})"


def read_verified(path: Path, authority: x509.Certificate | None = None) -> list[dict[str, Any]]:
    """Every entry of the ledger, raising LedgerError at the first one that is malformed,
    unsigned, wrongly signed, signed by a certificate not from `authority`, or off the chain."""
    entries: list[dict[str, Any]] = []
    previous = GENESIS
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            try:
                entry = _check_entry(line, number, previous, authority)
            except LedgerError as error:
                raise LedgerError(f"entry {number} (line {number}) {error}") from None
            except (ValueError, TypeError, KeyError, AttributeError) as error:
                raise LedgerError(
                    f"entry {number} (line {number}) is malformed ({error})"
                ) from None
            previous = entry["hash"]
            entries.append(entry)
    return entries


def receipt(entry: dict[str, Any]) -> Receipt:
    """What the provinces get of an entry: enough to hold the server to it later."""
    return Receipt(entry["index"], entry["hash"], entry["signature"])


class Ledger:
    """Appends signed entries to the ledger file, continuing the chain of what is there, and
    hands each entry's receipt to whoever subscribed (the coordinator, for the provinces).

    An entry is either flushed to disk before its receipt goes out (`append`), or written and
    flushed by a thread of its own while the run goes on (`write(entry, flushed=False)`): then
    the caller has made the entry durable elsewhere first (the round's checkpoint carries every
    entry in `unflushed`, and a resume writes them back with `restore`), so no receipt ever
    names an entry a crash could take from the ledger."""

    # What `append` adds to a record to chain and sign it.
    CHAIN_FIELDS = ("index", "previous", "certificate", "hash", "signature")

    def __init__(self, path: Path, signer: Signer) -> None:
        self.path = path
        self.signer = signer
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = read_verified(path) if path.exists() else []
        # Only what later entries and new subscribers need, so a long run's memory stays flat.
        self.receipts = [receipt(entry) for entry in entries]
        self.last_round: int = entries[-1]["round"] if entries else 0
        self._subscribers: list[Callable[[Receipt], None]] = []
        # Entries written but not yet known to be on disk, oldest first; guarded by the lock,
        # as the flushing thread trims it.
        self._unflushed: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flusher: ThreadPoolExecutor | None = None

    @property
    def head(self) -> str:
        return self.receipts[-1].hash if self.receipts else GENESIS

    @property
    def unflushed(self) -> list[dict[str, Any]]:
        """The entries a crash of the machine could still take from the file."""
        with self._lock:
            return list(self._unflushed)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, as the file holds them (checked)."""
        return read_verified(self.path) if self.path.exists() else []

    def subscribe(self, deliver: Callable[[Receipt], None]) -> None:
        """Call `deliver` with every entry's receipt: those already written, then each new one."""
        self._subscribers.append(deliver)
        for held in self.receipts:
            deliver(held)

    def sign(self, record: dict[str, Any]) -> dict[str, Any]:
        """`record` chained after the last entry written and signed; not written yet."""
        entry = {
            **record,
            "index": len(self.receipts) + 1,
            "previous": self.head,
            "certificate": self.signer.certificate,
        }
        entry["hash"] = entry_hash(entry)
        entry["signature"] = self.signer.sign(entry["hash"])
        return entry

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Sign `record`, write it and flush it to disk, then hand out its receipt."""
        entry = self.sign(record)
        self.write(entry)
        return entry

    def write(self, entry: dict[str, Any], flushed: bool = True) -> None:
        """Write a signed entry that continues the chain, flushed to disk before its receipt
        goes out, or (`flushed=False`) by the flushing thread after it."""
        if entry.get("index") != len(self.receipts) + 1 or entry.get("previous") != self.head:
            raise LedgerError(f"entry {entry.get('index')} does not continue the ledger's chain")
        with self.path.open("a") as out:
            out.write(json.dumps(entry, sort_keys=True, allow_nan=False) + "\n")
            out.flush()
            if flushed:
                os.fsync(out.fileno())
        if not flushed:
            with self._lock:
                self._unflushed.append(entry)
            if self._flusher is None:
                self._flusher = ThreadPoolExecutor(1, thread_name_prefix="ledger-flush")
            self._flusher.submit(self._flush, entry["index"])
        self.receipts.append(receipt(entry))
        self.last_round = entry["round"]
        for deliver in self._subscribers:
            deliver(self.receipts[-1])

    def restore(self, entries: list[dict[str, Any]]) -> None:
        """Write back, flushed and verbatim, those of a checkpoint's `entries` the file lost
        (it ends before them): their receipts may already be with the provinces."""
        for entry in entries:
            if entry["index"] > len(self.receipts):
                line = json.dumps(entry, sort_keys=True, allow_nan=False)
                _check_entry(line, len(self.receipts) + 1, self.head, None)
                self.write(entry)

    def close(self) -> None:
        """Wait until every entry written is on disk."""
        if self._flusher is not None:
            self._flusher.shutdown(wait=True)
            self._flusher = None

    def _flush(self, index: int) -> None:
        try:
            with self.path.open("rb") as file:
                os.fsync(file.fileno())
        except OSError as error:  # the entries stay in `unflushed`, so checkpoints keep them
            log.error("could not flush %s to disk: %s", self.path, error)
            return
        with self._lock:
            self._unflushed = [e for e in self._unflushed if e["index"] > index]


def check_receipts(entries: list[dict[str, Any]], folder: Path) -> int:
    """How many receipts the provinces' files in `folder` hold; LedgerError if the ledger
    disagrees with any (an entry edited, dropped, reordered or re-chained; entries cut off)."""
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise ReceiptError(f"{folder} holds no receipts files (<province>.jsonl)")
    count = 0
    for file in files:
        for held in read_receipts(file):
            count += 1
            if held.index > len(entries):
                raise LedgerError(
                    f"entry {held.index} is missing: {file.name} holds its receipt, but the "
                    f"ledger ends at entry {len(entries)} (entries were cut off the end)"
                )
            if entries[held.index - 1]["hash"] != held.hash:
                raise LedgerError(
                    f"{where(held.index)} disagrees with the receipt in "
                    f"{file.name}: it is not the entry the server sent the province (edited, "
                    "replaced or re-chained after the fact)"
                )
    return count


def check_model(entries: list[dict[str, Any]], model: Path) -> None:
    """LedgerError unless the model file's digest is the last entry's model digest."""
    try:
        with np.load(model, allow_pickle=False) as arrays:
            digest = Payload.encode({name: arrays[name] for name in arrays.files}).digest()
    except (OSError, ValueError) as error:
        raise LedgerError(f"{model.name} cannot be read as a model file: {error}") from None
    last = entries[-1] if entries else {}
    if last.get("model_digest") != digest:
        raise LedgerError(
            f"{model.name} is not the model the last entry (entry {len(entries)}) records: "
            f"its digest is {digest}, the entry says {last.get('model_digest')}"
        )


def verify(
    file: Path, head: str | None = None, ca: Path | None = None, receipts: Path | None = None
) -> str:
    """The verdict line for an intact ledger (ending at `head`, signed under `ca`, matching the
    `receipts` folder, where given); LedgerError or ReceiptError otherwise."""
    authority = None
    if ca is not None:
        try:
            authority = x509.load_pem_x509_certificate(ca.read_bytes())
        except ValueError:
            raise ReceiptError(f"{ca} is not a PEM certificate") from None
    entries = read_verified(file, authority)
    last = entries[-1]["hash"] if entries else GENESIS
    if head and head != last:
        raise LedgerError(
            f"the last entry's hash is {last}, expected {head}: entries were removed from "
            "the end or added after it"
        )
    checks = ["signatures valid"]
    checks.append("signer issued by the given CA" if authority else "signer not checked (no --ca)")
    if receipts is not None:
        checks.append(f"{check_receipts(entries, receipts)} receipts agree")
    model = file.with_name("model.npz")
    if entries and model.exists():
        check_model(entries, model)
        checks.append(f"{model.name} is the last entry's model")
    rounds = [e["round"] for e in entries]
    span = f"rounds {rounds[0]}–{rounds[-1]}" if rounds else "no rounds yet"
    return f"intact, {len(entries)} entries, {span}; {', '.join(checks)}"


if __name__ == "__main__":  # the command line is server/ledger_cli.py
    from server.ledger_cli import main

    sys.exit(main())
