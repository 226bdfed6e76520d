"""FedAvg over threshold Paillier: the server adds encrypted uploads and learns only their sum.

Clients send Enc(nᵢ·wᵢ) for each parameter and Enc(nᵢ) under `he_weight`, their statistics
(n, Σz, Σzzᵀ) encrypted as they are, and their scores encrypted as sums over their test rows
(common/forecast.py). The server multiplies the ciphertexts modulo n² (adding
the plaintexts) and relays the signed uploads to the provinces in a decryption task; each
checks them, multiplies them itself and answers with its partial decryption of the product
(client/he.py), and any `threshold` of them combine into the sum (common/threshold.py). So the
server holds the federation's sums and never one province's upload, and no province, alone or
with the server, can decrypt another's. Each phase is a session of its own, named in its tasks
with the run's identity, which the provinces sign their uploads for; each province decrypts one
sum per round and phase of the run (client/he_record.py). The run's identity is checkpointed, so
a restarted server goes on as the same run.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from common import forecast, he_relay, paillier, threshold
from common.models.checks import UpdateError
from common.paillier import WEIGHT
from common.protection import HESession, Protection
from common.settings import RoundNumber
from common.tensors import Arrays
from proto.fedstock.v1 import federation_pb2 as pb
from server.disclosure import CUTOFF, DATE_COUNTS, SCALER, entry
from server.strategy import (
    STATISTICS,
    ClientResult,
    Evaluation,
    FedAvg,
    Instruction,
    Strategy,
    checked_sums,
)

log = logging.getLogger("fedstock.server")

HIDDEN = "hidden (encrypted)"
SCORES = {name: (len(forecast.MEANS),) for name in (forecast.SUMS, forecast.ROWS)}


def check_proofs(upload: Arrays) -> None:
    """A signature and a certificate as bytes (empty when the province has no certificate)."""
    for name in he_relay.PROOFS:
        tensor = upload.get(name)
        if tensor is None or tensor.dtype != np.uint8 or tensor.ndim != 1:
            raise UpdateError(f"an encrypted upload must carry {name!r} as bytes")


def check_ciphertexts(arrays: Arrays, shapes: dict[str, tuple[int, ...]], modulus: int) -> None:
    """Exactly these tensors of ciphertexts under `modulus`, of these plaintext shapes."""
    if set(arrays) != set(shapes):
        raise UpdateError(f"expected encrypted tensors {sorted(shapes)}, got {sorted(arrays)}")
    try:
        for name, tensor in arrays.items():
            paillier.from_tensor(tensor, modulus)
            if tensor.shape[:-1] != tuple(shapes[name]):
                raise UpdateError(f"{name!r} holds ciphertexts of shape {tensor.shape[:-1]}")
    except paillier.CiphertextError as error:
        raise UpdateError(str(error)) from None


class HEFedAvg(Strategy):
    """`inner` FedAvg on encrypted updates; its checks apply to the plaintext shapes."""

    persistent = ("he_run",)

    def __init__(self, inner: FedAvg, public: threshold.PublicKey) -> None:
        super().__init__(inner.model_config)
        self.inner = inner
        self.public = public
        self.session = ""  # the open training phase's, whose uploads the next sum decrypts
        self.scoring = ""  # the open evaluation's
        self.he_run: np.ndarray | None = None  # the run's identity, as bytes; made when needed

    def _protection(self, session: str) -> dict:
        """The settings that tell a province to encrypt and sign for `session` of this run."""
        if self.he_run is None:  # a new run, or one checkpointed before runs had an identity
            self.he_run = np.frombuffer(secrets.token_bytes(16), dtype=np.uint8).copy()
        named = HESession(session, bytes(self.he_run).hex())
        return {**Protection("he").to_config(), **named.to_config()}

    def _config(self, server_round: int, session: str) -> dict:
        return {
            **self.model_config,
            **RoundNumber(server_round).to_config(),
            **self._protection(session),
        }

    def _holders(self, provinces: list[str]) -> list[str]:
        """The provinces that hold a share: only they can upload (and help decrypt)."""
        strangers = sorted(set(provinces) - set(self.public.members))
        if strangers:
            log.warning("%s hold no share of the HE key and are left out", ", ".join(strangers))
        return [p for p in provinces if p in self.public.members]

    def configure_fit(self, server_round, parameters, provinces):
        self.session = secrets.token_hex(16)
        plan = self.inner.configure_fit(server_round, parameters, self._holders(provinces))
        extra = self._protection(self.session)
        return [replace(i, config={**i.config, **extra}) for i in plan]

    def configure_evaluate(self, server_round, parameters, provinces):
        """Scores leave encrypted, as sums over each province's test rows (common/forecast.py):
        the server decrypts the federation's totals only."""
        self.scoring = secrets.token_hex(16)
        plan = self.inner.configure_evaluate(server_round, parameters, self._holders(provinces))
        extra = self._protection(self.scoring)
        return [replace(i, config={**i.config, **extra}) for i in plan]

    def check_evaluation(self, result: ClientResult) -> None:
        check_proofs(result.arrays)
        check_ciphertexts(he_relay.ciphertexts(result.arrays), SCORES, self.public.n)

    def aggregate_evaluate(self, server_round, results, failures):
        sums = self._sum_and_decrypt(server_round, self.scoring, results)
        if sums is None:
            return None
        rows = {r.province: r.num_examples for r in results}
        return Evaluation.aggregated(sums, rows, HIDDEN)

    def disclosure(self):
        held = (
            f"Paillier ciphertexts of each province's upload, summed under encryption; only the "
            f"sum, decrypted by {self.public.threshold} of the {len(self.public.members)} "
            f"provinces' key shares; which provinces took part, and each one's row count, "
            f"in the clear"
        )
        relayed = "the other provinces' uploads as ciphertexts, to decrypt their product with"
        return {
            **self.inner.disclosure(),
            "dates": entry(
                f"{DATE_COUNTS}, summed over the provinces: {held}", f"{CUTOFF}; {relayed}"
            ),
            "statistics": entry(
                f"the sums of n, Σz and Σzzᵀ over the provinces: {held}", f"{SCALER}; {relayed}"
            ),
            "updates": entry(
                f"the sample-weighted average of the round's updates: {held}",
                f"the global model after each round; {relayed}",
            ),
            "metrics": entry(
                "the federation's test scores (MSE, MAE, direction and the naive forecasts' MSEs "
                f"summed over every test row): {held}; no province's own score",
                f"nothing of any other province's scores; {relayed}",
            ),
        }

    def check_update(self, arrays: Arrays, n_features: int) -> None:
        """Ciphertexts under our modulus, shaped like an update of the inner model plus a weight."""
        check_proofs(arrays)
        arrays = he_relay.ciphertexts(arrays)
        if WEIGHT not in arrays:
            raise UpdateError(f"an encrypted update must carry its sample weight {WEIGHT!r}")
        shapes = {k: t.shape[:-1] for k, t in arrays.items()}
        check_ciphertexts(arrays, {**shapes, WEIGHT: ()}, self.public.n)
        self.inner.check_update(
            {k: np.zeros(s) for k, s in shapes.items() if k != WEIGHT}, n_features
        )

    def aggregate_fit(self, server_round, results, failures, current):
        sums = self._sum_and_decrypt(server_round, self.session, results)
        if sums is None:
            return None
        weight = float(sums.pop(WEIGHT))
        if weight <= 0:
            log.warning("round %d: the decrypted sample weight is %g", server_round, weight)
            return None
        return {k: v / weight for k, v in sums.items()}

    def gather_statistics(self, provinces, shapes, check, plausible, config=None):
        """The statistics (n, Σz and Σzzᵀ, or the day counts) encrypted, summed under
        encryption and threshold-decrypted: the server never holds one province's, and checks
        the sum only."""

        def accept(result: ClientResult) -> ClientResult:
            check(result)
            check_proofs(result.arrays)
            check_ciphertexts(he_relay.ciphertexts(result.arrays), dict(shapes), self.public.n)
            return result

        session = secrets.token_hex(16)
        config = {**self._config(0, session), **(config or {})}
        plan = [Instruction(p, config, None) for p in self._holders(provinces)]
        results, _ = self.run_phase(0, STATISTICS, plan, accept)
        return checked_sums(results, self._sum_and_decrypt(0, session, results), plausible)

    def _sum_and_decrypt(
        self, server_round: int, session: str, results: list[ClientResult]
    ) -> Arrays | None:
        """The plaintext sum of the encrypted uploads in `results`, decrypted by the partial
        decryptions of the provinces that sent them; None when too few answer or they disagree."""
        if len(results) < self.public.threshold:
            log.warning(
                "round %d: %d encrypted uploads, fewer than the %d provinces needed to decrypt",
                server_round,
                len(results),
                self.public.threshold,
            )
            return None
        n = self.public.n
        relay = he_relay.pack({r.province: r.arrays for r in results})
        shapes = {name: t.shape[:-1] for name, t in he_relay.ciphertexts(results[0].arrays).items()}
        config = self._config(server_round, session)
        plan = [Instruction(r.province, config, relay) for r in results]
        partials, _ = self.run_phase(
            server_round, pb.TASK_KIND_HE_DECRYPT, plan, self._partial(shapes)
        )
        try:
            plaintexts = threshold.combine(
                self.public,
                {
                    self.public.index(r.province): [
                        c for name in shapes for c in paillier.from_tensor(r.arrays[name], n)
                    ]
                    for r in partials
                },
            )
        except threshold.ThresholdError as error:
            log.warning("round %d: cannot decrypt the sum: %s", server_round, error)
            return None
        decoded, start = {}, 0
        for name, shape in shapes.items():
            size = int(np.prod(shape, dtype=int))
            decoded[name] = paillier.decode(plaintexts[start : start + size], n).reshape(shape)
            start += size
        return decoded

    def _partial(
        self, shapes: dict[str, tuple[int, ...]]
    ) -> Callable[[ClientResult], ClientResult]:
        def accept(result: ClientResult) -> ClientResult:
            check_ciphertexts(result.arrays, shapes, self.public.n)
            return result

        return accept
