"""Paillier ciphertexts as tensors, and the fixed-point encoding of updates inside them.

Paillier is additively homomorphic: multiplying ciphertexts modulo n² adds their plaintexts
modulo n, so the server can sum encrypted updates knowing only the public modulus n. Reals are
encoded as integers in units of 2^-FRACTION_BITS, negatives wrapping modulo n; a value is
refused when even MAX_CLIENTS such values could wrap the sum. A ciphertext travels as the
big-endian bytes of an integer below n², in a uint8 tensor with one more (trailing) axis.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from phe import paillier as phe

from common.threshold import PublicKey

FRACTION_BITS = 32
# The encrypted sum of the clients' sample counts travels beside the encrypted weighted sums.
WEIGHT = "he_weight"
MAX_CLIENTS = 1 << 16
# Below 2048 bits a Paillier modulus can be factored within reach of a determined attacker
# (NIST SP 800-57: 2048-bit RSA-type moduli for 112-bit security); smaller keys are for tests.
MIN_KEY_BITS = 2048
INSECURE_KEY_FLAG = "--he-insecure-key-size"


class CiphertextError(ValueError):
    """Bytes that are not a ciphertext under this modulus."""


def width(modulus: int) -> int:
    """Bytes of one ciphertext: enough for any integer below n²."""
    return (2 * modulus.bit_length() + 7) // 8


def encode(values: np.ndarray, modulus: int) -> list[int]:
    limit = modulus // (2 * MAX_CLIENTS)
    scaled = [round(float(v) * (1 << FRACTION_BITS)) for v in np.ravel(values)]
    if any(abs(s) >= limit for s in scaled):
        raise ValueError("a value is too large for the fixed-point encoding under this key")
    return [s % modulus for s in scaled]


def decode(integers: list[int], modulus: int) -> np.ndarray:
    signed = [i - modulus if i > modulus // 2 else i for i in integers]
    return np.array([s / (1 << FRACTION_BITS) for s in signed], dtype=np.float64)


def to_tensor(ciphertexts: list[int], shape: tuple[int, ...], modulus: int) -> np.ndarray:
    size = width(modulus)
    blob = b"".join(c.to_bytes(size, "big") for c in ciphertexts)
    return np.frombuffer(blob, dtype=np.uint8).reshape((*shape, size)).copy()


def from_tensor(tensor: np.ndarray, modulus: int) -> list[int]:
    """The ciphertexts in `tensor`, each checked to be a residue modulo n² other than 0."""
    size, square = width(modulus), modulus * modulus
    if tensor.dtype != np.uint8 or tensor.ndim < 1 or tensor.shape[-1] != size:
        raise CiphertextError(f"ciphertexts must be uint8 with a last axis of {size} bytes")
    integers = [int.from_bytes(row.tobytes(), "big") for row in tensor.reshape(-1, size)]
    if any(not 0 < c < square for c in integers):
        raise CiphertextError("a ciphertext lies outside 1..n²-1")
    return integers


def add(tensors: list[np.ndarray], modulus: int) -> np.ndarray:
    """The encryption of the sum of the plaintexts: the product of the ciphertexts mod n²."""
    square = modulus * modulus
    columns = [from_tensor(t, modulus) for t in tensors]
    product = [1] * len(columns[0])
    for column in columns:
        product = [p * c % square for p, c in zip(product, column, strict=True)]
    return to_tensor(product, tensors[0].shape[:-1], modulus)


def encrypt(values: np.ndarray, modulus: int) -> np.ndarray:
    """`values` encoded and encrypted under the modulus, as a tensor of ciphertexts."""
    public = phe.PaillierPublicKey(modulus)
    sealed = [public.raw_encrypt(m) for m in encode(values, modulus)]
    return to_tensor(sealed, np.shape(values), modulus)


def check_key_size(modulus: int, allow_small: bool = False) -> int:
    """The modulus, or ValueError if it is below MIN_KEY_BITS and small keys are not allowed."""
    bits = modulus.bit_length()
    if bits < MIN_KEY_BITS and not allow_small:
        raise ValueError(
            f"the Paillier key has a {bits}-bit modulus, below the {MIN_KEY_BITS}-bit minimum; "
            f"make one with `python -m client.he_keys DIR` (or, for tests only, pass "
            f"{INSECURE_KEY_FLAG})"
        )
    return modulus


def public_fields(public: PublicKey) -> dict[str, Any]:
    """The public key as its file holds it: the modulus, the threshold, the share holders."""
    return {"n": f"{public.n:x}", "threshold": public.threshold, "members": list(public.members)}


def read_public_key(path: Path, allow_small: bool = False) -> PublicKey:
    """The threshold public key in a he.pub file written by `python -m client.he_keys`."""
    try:
        fields = json.loads(path.read_text())
        if "threshold" not in fields:
            raise ValueError(
                "it names no threshold and share holders (a key from before threshold "
                "decryption): deal shares with `python -m client.he_keys DIR`"
            )
        modulus = check_key_size(int(fields["n"], 16), allow_small)
        return PublicKey(modulus, int(fields["threshold"]), tuple(fields["members"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read a Paillier public key from {path}: {error}") from None
