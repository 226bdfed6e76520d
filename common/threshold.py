"""Threshold Paillier: the decryption key split among the provinces, any t of them decrypting.

A dealer who is not the server picks the modulus n = pq and the exponent d with d ≡ 0 mod λ
and d ≡ 1 mod n (λ = lcm(p−1, q−1)), so that c^d = 1 + m·n mod n² for c = Enc(m). It shares
d with Shamir's scheme over the integers modulo nλ, gives province i its share sᵢ = f(i), and
forgets p, q and d. Province i's partial decryption of c is cᵢ = c^(2Δsᵢ) mod n², Δ = ℓ! for
ℓ shares; for any t of them, the integer Lagrange coefficients μᵢ = Δ·∏ j/(j−i) give
∏ cᵢ^(2μᵢ) = c^(4Δ²d) = 1 + 4Δ²m·n mod n², whence m (Damgård and Jurik, 2001, with the dealer
of Fouque, Poupard and Stern, 2000, but without safe primes, so without their proofs that a
partial decryption is correct: a wrong one is caught only when more than t answer, by two
subsets that disagree, or when the result is not of the form 1 + x·n).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gmpy2 import powmod  # ten times Python's pow at these sizes


class ThresholdError(ValueError):
    """Partial decryptions that cannot be combined into the plaintext."""


@dataclass(frozen=True)
class PublicKey:
    """The modulus, how many shares decrypt, and the provinces holding share 1, 2, …"""

    n: int
    threshold: int
    members: tuple[str, ...]

    def __post_init__(self) -> None:
        if not 2 <= self.threshold <= len(self.members):
            raise ValueError(
                f"the threshold must be between 2 and the {len(self.members)} share holders, "
                f"not {self.threshold}: with 1, any one province decrypts alone"
            )
        if len(set(self.members)) != len(self.members):
            raise ValueError("a province is named twice among the share holders")

    @property
    def delta(self) -> int:
        return math.factorial(len(self.members))

    def index(self, province: str) -> int:
        """The number of `province`'s share; ValueError if it holds none."""
        if province not in self.members:
            raise ValueError(f"{province} holds no share of this key")
        return self.members.index(province) + 1


@dataclass(frozen=True)
class Share:
    """One province's share sᵢ of the decryption exponent: on its own it decrypts nothing."""

    public: PublicKey
    index: int
    secret: int


def deal(p: int, q: int, members: Sequence[str], threshold: int) -> tuple[PublicKey, list[Share]]:
    """The public key and one share per member, from the primes p and q (then to be forgotten)."""
    n, lam = p * q, math.lcm(p - 1, q - 1)
    if p == q or math.gcd(n, lam) != 1:
        raise ValueError("p and q must be distinct primes of the same size")
    public = PublicKey(n, threshold, tuple(members))
    d = lam * pow(lam, -1, n)  # ≡ 0 mod λ, ≡ 1 mod n
    modulus = n * lam
    coefficients = [d, *(secrets.randbelow(modulus) for _ in range(threshold - 1))]
    shares = [
        Share(public, i, sum(a * i**k for k, a in enumerate(coefficients)) % modulus)
        for i in range(1, len(members) + 1)
    ]
    return public, shares


def partial(share: Share, ciphertexts: Sequence[int]) -> list[int]:
    """This share's partial decryption of each ciphertext: cᵢ = c^(2Δsᵢ) mod n²."""
    square = share.public.n**2
    exponent = 2 * share.public.delta * share.secret
    return [int(powmod(c, exponent, square)) for c in ciphertexts]


def lagrange(delta: int, indices: Sequence[int]) -> dict[int, int]:
    """μᵢ = Δ·ℓᵢ(0) over `indices`: integers, since Δ = ℓ! clears every denominator."""
    weights = {}
    for i in indices:
        numerator, denominator = delta, 1
        for j in indices:
            if j != i:
                numerator, denominator = numerator * j, denominator * (j - i)
        weights[i] = numerator // denominator
    return weights


def combine(public: PublicKey, partials: Mapping[int, Sequence[int]]) -> list[int]:
    """The plaintexts (mod n) of the ciphertexts that `partials` (share index -> partial
    decryptions) decrypt; ThresholdError with fewer than t, or when they do not agree."""
    indices = sorted(partials)
    if len(indices) < public.threshold:
        raise ThresholdError(
            f"{len(indices)} partial decryptions, fewer than the {public.threshold} needed"
        )
    first = _combine(public, partials, indices[: public.threshold])
    # Two different subsets must agree; a wrong partial decryption in either changes one.
    if len(indices) > public.threshold:
        second = _combine(public, partials, indices[-public.threshold :])
        if second != first:
            raise ThresholdError(
                "the partial decryptions disagree: at least one province sent a wrong one"
            )
    return first


def _combine(
    public: PublicKey, partials: Mapping[int, Sequence[int]], chosen: list[int]
) -> list[int]:
    n, square = public.n, public.n**2
    weights = lagrange(public.delta, chosen)
    scale = pow(4 * public.delta**2, -1, n)
    lengths = {len(partials[i]) for i in chosen}
    if len(lengths) != 1:
        raise ThresholdError("the partial decryptions are of different numbers of ciphertexts")
    plaintexts = []
    for column in zip(*(partials[i] for i in chosen), strict=True):
        value = 1
        try:
            for i, c in zip(chosen, column, strict=True):
                value = value * powmod(c, 2 * weights[i], square) % square
        except ValueError:  # a negative power of a value with no inverse modulo n²
            raise ThresholdError("a partial decryption is not a unit modulo n²") from None
        if value % n != 1:
            raise ThresholdError("a partial decryption is wrong: the shares do not combine")
        plaintexts.append(int((value - 1) // n * scale % n))
    return plaintexts
