"""Signed encrypted uploads, relayed with the decryption task, so a province decrypts only sums.

Under threshold HE a province partially decrypts what it is sent. If that were a ciphertext of
the server's choosing, a server could have one province's upload decrypted alone. So each
province signs its encrypted upload, bound to the run, the round and the phase's session, with
its certificate's key, and the decryption task carries the uploads themselves, not their sum:
each province checks the signatures, that at least a threshold of distinct share holders'
uploads are there, and that it has decrypted no other sum of this round's phase in this run
(client/he_record.py), then multiplies them itself and decrypts the product. With a threshold
above half the share holders, at most one sum per round and phase can be decrypted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from common.tensors import Arrays

SIGNATURE, CERTIFICATE = "he_signature", "he_certificate"
PROOFS = (SIGNATURE, CERTIFICATE)
SEPARATOR = "/"  # relayed tensors are named <province>/<tensor>


@dataclass(frozen=True)
class Context:
    """What an upload is for, as its task said: the run, the round and the phase's session.
    Signed with the upload, so the server cannot relay it into another run's or round's sum."""

    run: str
    round: int
    session: str


def phase(ciphertexts: Arrays) -> str:
    """The phase an upload belongs to, named by the tensors it holds (statistics, day counts,
    an update, scores): the province's own reading, not a label the server chooses."""
    return ",".join(sorted(ciphertexts))


def message(context: Context, province: str, ciphertexts: Arrays) -> bytes:
    """What a province signs: its ciphertexts, by name and shape, for this context."""
    digest = hashlib.sha256()
    for name in sorted(ciphertexts):
        tensor = np.ascontiguousarray(ciphertexts[name])
        digest.update(f"{name}\0{tensor.shape}\0".encode() + tensor.tobytes())
    bound = f"{context.run}\0{context.round}\0{context.session}\0{province}\0"
    return b"fedstock he upload v2\0" + bound.encode() + digest.digest()


def proofs(signature: bytes, certificate: bytes) -> Arrays:
    return {
        SIGNATURE: np.frombuffer(signature, dtype=np.uint8).copy(),
        CERTIFICATE: np.frombuffer(certificate, dtype=np.uint8).copy(),
    }


def ciphertexts(upload: Arrays) -> Arrays:
    """An upload without its signature and certificate."""
    return {name: tensor for name, tensor in upload.items() if name not in PROOFS}


def pack(uploads: dict[str, Arrays]) -> Arrays:
    """Each province's upload, proofs included, as the decryption task's tensors."""
    return {
        f"{province}{SEPARATOR}{name}": tensor
        for province, upload in uploads.items()
        for name, tensor in upload.items()
    }


def unpack(arrays: Arrays) -> dict[str, Arrays]:
    """The uploads `pack` relayed, by province; ValueError for a tensor named otherwise."""
    uploads: dict[str, Arrays] = {}
    for key, tensor in arrays.items():
        province, separator, name = key.partition(SEPARATOR)
        if not separator or not province or not name:
            raise ValueError(f"the relayed tensor {key!r} names no province")
        uploads.setdefault(province, {})[name] = tensor
    return uploads
