"""What a province does to an update before it leaves, and to encrypted parameters on arrival.

The server asks for a mechanism through the task config (`privacy`): `dp-local` clips the
step from the global parameters and adds Gaussian noise here, so the server never sees it
without the noise; `he` encrypts the sample-weighted update under the federation's Paillier
key, which only the provinces hold, and decrypts the sum the server sends back; `secagg` masks
the update so that only the sum of all updates can be unmasked (client/secagg.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from phe import paillier as phe

from client.secagg import SecAggClient
from common import paillier
from common.keysign import Identity
from common.tensors import Arrays
from common.vectors import clip, delta, flatten, unflatten
from common.wire import ConfigScalar


class PrivacyError(RuntimeError):
    """The server asks for a mechanism this client is not set up for."""


def privatize(
    update: Arrays,
    reference: Arrays | None,
    config: Mapping[str, ConfigScalar],
    rng: np.random.Generator | None = None,
) -> Arrays:
    """Local DP: the step from `reference` clipped to `dp_clip`, plus N(0, (σ·clip)²) noise."""
    if config.get("privacy") != "dp-local":
        return update
    bound = float(config["dp_clip"])
    sigma = float(config["dp_noise_multiplier"])
    rng = rng or np.random.default_rng()
    step = clip(delta(update, reference), bound)
    noisy = step + rng.normal(0.0, sigma * bound, size=step.shape)
    base = 0.0 if reference is None else flatten(reference)
    return unflatten(base + noisy, update)


class ClientPrivacy:
    """The mechanisms as one object: the federation's private key if any, the province's
    certificate to sign its secure-aggregation keys with (none when insecure), the protocol's
    state."""

    def __init__(
        self, key: phe.PaillierPrivateKey | None = None, identity: Identity | None = None
    ) -> None:
        self.key = key
        self.secagg = SecAggClient(identity)

    def _key(self) -> phe.PaillierPrivateKey:
        if self.key is None:
            raise PrivacyError("the server asks for encrypted updates; start with --he-key FILE")
        return self.key

    def reveal(
        self, parameters: Arrays | None, config: Mapping[str, ConfigScalar]
    ) -> Arrays | None:
        """Plain global parameters: decrypted under `he`, without relayed shares under `secagg`."""
        if parameters is not None and config.get("privacy") == "secagg":
            return self.secagg.strip(parameters)
        if config.get("privacy") != "he" or parameters is None:
            return parameters
        key = self._key()
        n = key.public_key.n

        def plain(tensor: np.ndarray) -> np.ndarray:
            integers = [key.raw_decrypt(c) for c in paillier.from_tensor(tensor, n)]
            return paillier.decode(integers, n).reshape(tensor.shape[:-1])

        weight = float(plain(parameters[paillier.WEIGHT]))
        if weight <= 0:
            raise PrivacyError("the encrypted aggregate carries no positive sample weight")
        return {
            name: plain(t) / weight for name, t in parameters.items() if name != paillier.WEIGHT
        }

    def protect(
        self,
        update: Arrays,
        reference: Arrays | None,
        num_examples: int,
        config: Mapping[str, ConfigScalar],
    ) -> Arrays:
        """The update as it may leave this province under the mechanism the server asks for."""
        if config.get("privacy") == "secagg":
            return self.secagg.mask(update, num_examples, config)
        if config.get("privacy") != "he":
            return privatize(update, reference, config)
        public = self._key().public_key
        weighted = {name: array * num_examples for name, array in update.items()}
        weighted[paillier.WEIGHT] = np.array(float(num_examples))
        return {
            name: paillier.to_tensor(
                [public.raw_encrypt(m) for m in paillier.encode(array, public.n)],
                np.shape(array),
                public.n,
            )
            for name, array in weighted.items()
        }
