"""FedAvg over Paillier ciphertexts: the server adds encrypted updates it cannot read.

Clients send Enc(nᵢ·wᵢ) for each parameter and Enc(nᵢ) under `he_weight`; the server
multiplies the ciphertexts modulo n² (adding the plaintexts), and the new global parameters are
that encrypted sum, which the provinces decrypt and divide by Σnᵢ themselves. The server holds
the public modulus only, so it never sees an update, the model or the clients' sample weights.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from common import paillier
from common.models.checks import UpdateError
from common.paillier import WEIGHT
from common.tensors import Arrays
from server.disclosure import entry
from server.strategy import FedAvg, Instruction, Strategy


class HEFedAvg(Strategy):
    """`inner` FedAvg on encrypted updates; its checks apply to the plaintext shapes."""

    def __init__(self, inner: FedAvg, modulus: int) -> None:
        super().__init__(inner.model_config)
        self.inner = inner
        self.modulus = modulus

    @staticmethod
    def _ask(plan: list[Instruction]) -> list[Instruction]:
        return [replace(i, config={**i.config, "privacy": "he"}) for i in plan]

    def configure_fit(self, server_round, parameters, provinces):
        return self._ask(self.inner.configure_fit(server_round, parameters, provinces))

    def configure_evaluate(self, server_round, parameters, provinces):
        return self._ask(self.inner.configure_evaluate(server_round, parameters, provinces))

    def disclosure(self):
        return {
            **self.inner.disclosure(),
            "updates": entry(
                "Paillier ciphertexts of each province's sample-weighted update and weight, and "
                "their encrypted sum: no update, model or weight it can read; every province "
                "holds the one private key, so the server and any one province together read all",
                "the global model, decrypted with the shared key",
            ),
        }

    def check_update(self, arrays: Arrays, n_features: int) -> None:
        """Ciphertexts under our modulus, shaped like an update of the inner model plus a weight."""
        if WEIGHT not in arrays:
            raise UpdateError(f"an encrypted update must carry its sample weight {WEIGHT!r}")
        try:
            for tensor in arrays.values():
                paillier.from_tensor(tensor, self.modulus)
        except paillier.CiphertextError as error:
            raise UpdateError(str(error)) from None
        shapes = {k: np.zeros(t.shape[:-1]) for k, t in arrays.items() if k != WEIGHT}
        self.inner.check_update(shapes, n_features)
        if arrays[WEIGHT].shape[:-1] != ():
            raise UpdateError(f"{WEIGHT!r} must hold one ciphertext")

    def aggregate_fit(self, server_round, results, failures, current):
        if not results:
            return None
        return {
            name: paillier.add([r.arrays[name] for r in results], self.modulus)
            for name in results[0].arrays
        }
