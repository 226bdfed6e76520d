"""Secure aggregation as a --privacy mode: the server unmasks the sum of the updates, no single one.

Around each round's training the strategy runs common/secagg.py's protocol through phases of its
own: KEYS (each client's two public keys, signed with its certificate's key; the server relays
them with the certificate so that every client can check them, common/keysign.py), SHARES (each
client's secret shares, encrypted for every other client, which the server relays without being
able to open), TRAIN (each client's sample-weighted update and weight, masked) and UNMASK (the
survivors' shares that remove the masks, whoever dropped out). Clients are numbered 1..n by
sorted province each round; a round goes ahead as long as `threshold` clients stay in. With
`neighbours` k (SecAgg+), each client masks with only its k neighbours on a fresh seeded graph
each round, and `threshold` counts within a neighbourhood.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from common import forecast, secagg, vectors
from common.models.checks import UpdateError
from common.protection import Protection
from common.settings import RoundNumber
from common.tensors import Arrays
from common.wire import ConfigScalar
from proto.fedstock.v1 import federation_pb2 as pb
from server.disclosure import CUTOFF, DATE_COUNTS, SCALER, contributors, entry
from server.strategy import (
    ClientResult,
    Evaluation,
    FedAvg,
    Instruction,
    Strategy,
    checked_sums,
)

log = logging.getLogger("fedstock.server")

SCORE_SUMS = (forecast.SUMS, forecast.ROWS)
HIDDEN = "hidden (secure aggregation)"


def _expect(arrays: Arrays, shapes: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> None:
    """Exactly these tensors, of these dtypes and shapes (-1: any length)."""
    if set(arrays) != set(shapes):
        raise UpdateError(f"expected tensors {sorted(shapes)}, got {sorted(arrays)}")
    for name, (dtype, shape) in shapes.items():
        array = arrays[name]
        fits = array.ndim == len(shape) and all(
            s in (-1, a) for s, a in zip(shape, array.shape, strict=True)
        )
        if array.dtype != dtype or not fits:
            raise UpdateError(f"tensor {name!r} is {array.dtype} {array.shape}, not {shape}")


def _checked(
    shapes: dict[str, tuple[np.dtype, tuple[int, ...]]],
) -> Callable[[ClientResult], ClientResult]:
    def accept(result: ClientResult) -> ClientResult:
        _expect(result.arrays, shapes)
        return result

    return accept


@dataclass(frozen=True)
class _Round:
    index: dict[str, int]
    adverts: dict[int, tuple[bytes, bytes]]  # of the clients that sent their shares
    threshold: int
    config: dict[str, ConfigScalar]
    graph: secagg.Graph | None  # None: the complete graph

    def parted(self, results: list[ClientResult]) -> tuple[list[int], list[int]]:
        """The seats whose masked inputs are in `results`, and those that shared their keys
        but sent no input (their masks are removed from the survivors' shares)."""
        masked = sorted(self.index[r.province] for r in results)
        return masked, sorted(set(self.adverts) - set(masked))


class SecAggFedAvg(Strategy):
    """`inner` FedAvg whose updates the server only ever sees masked; their sum it unmasks."""

    def __init__(
        self, inner: FedAvg, threshold: int = 0, bound: float = 1e9, neighbours: int = 0
    ) -> None:
        super().__init__(inner.model_config)
        self.inner = inner
        self.threshold = threshold
        self.bound = bound
        self.neighbours = neighbours
        self._round: _Round | None = None
        # Whose masked inputs the round's sum was unmasked over, and whose masks it removed
        # though their input never came: what a round's disclosure reports.
        self._fit_unmasked: tuple[list[str], list[str]] | None = None

    def _ask(
        self,
        server_round: int,
        kind: int,
        targets: dict[str, tuple[dict[str, ConfigScalar], Arrays | None]],
        accept: Callable[[ClientResult], ClientResult],
    ) -> list[ClientResult]:
        plan = [Instruction(p, config, arrays) for p, (config, arrays) in targets.items()]
        results, failures = self.run_phase(server_round, kind, plan, accept)
        for failure in failures:
            log.warning("round %d: secure aggregation lost %s", server_round, failure.province)
        return results

    def configure_fit(self, server_round, parameters, provinces):
        self._fit_unmasked = None
        return self._open(server_round, provinces, parameters, "bounded")

    def _open(
        self, server_round: int, provinces: list[str], parameters: Arrays | None, encoding: str
    ) -> list[Instruction]:
        """The protocol's keys and shares phases; each province's task to send its masked input
        with, the shares relayed to it beside `parameters`."""
        index = {p: i for i, p in enumerate(sorted(provinces), start=1)}
        n = len(index)
        k = self.neighbours if self.neighbours < n - 1 else 0  # 0: everyone
        seed = secrets.randbelow(1 << 31)
        graph = secagg.neighbours(n, k, seed) if k else None
        threshold = self.threshold or (k + 1 if k else n) * 2 // 3 + 1
        base = {
            **self.model_config,
            **RoundNumber(server_round).to_config(),
            **Protection("secagg").to_config(),
            **secagg.Announcement(
                # A fresh protocol instance: clients refuse one they have run, and sign over it.
                secagg_session=secrets.token_hex(16),
                secagg_members=",".join(index),  # provinces in index order, for the signatures
                secagg_clients=n,
                secagg_threshold=threshold,
                secagg_bound=self.bound,
                secagg_encoding=encoding,
                secagg_neighbours=k,
                secagg_graph_seed=seed,
            ).to_config(),
        }
        own = {p: {**base, **secagg.Seat(i).to_config()} for p, i in index.items()}
        keys = self._ask(
            server_round,
            pb.TASK_KIND_SECAGG_KEYS,
            {p: (own[p], None) for p in index},
            _checked(
                {
                    "keys": (np.dtype(np.uint8), (2, 32)),
                    "signature": (np.dtype(np.uint8), (-1,)),
                    "certificate": (np.dtype(np.uint8), (-1,)),
                }
            ),
        )
        adverts = {index[r.province]: tuple(k.tobytes() for k in r.arrays["keys"]) for r in keys}
        proofs = {
            index[r.province]: (r.arrays["signature"].tobytes(), r.arrays["certificate"].tobytes())
            for r in keys
        }
        if any(not signature for signature, _ in proofs.values()):
            log.warning(
                "round %d: secure-aggregation keys arrive unsigned (clients without "
                "certificates): nothing stops a relay from substituting them",
                server_round,
            )
        packed = secagg.pack_adverts(adverts, proofs)

        def targets(u: int) -> list[int]:
            """Whom u's shares are for, in the order of its rows."""
            return [v for v in sorted(adverts) if v != u and (graph is None or v in graph[u])]

        def accept_shares(result: ClientResult) -> ClientResult:
            rows = len(targets(index[result.province]))
            _expect(result.arrays, {"shares": (np.dtype(np.uint8), (rows, secagg.SEALED_BYTES))})
            return result

        shares = self._ask(
            server_round,
            pb.TASK_KIND_SECAGG_SHARES,
            {r.province: (own[r.province], packed) for r in keys},
            accept_shares,
        )
        if len(shares) < threshold:
            log.warning(
                "round %d: %d clients shared keys, fewer than %d",
                server_round,
                len(shares),
                threshold,
            )
            self._round = None
            return []
        sealed = {index[r.province]: r.arrays["shares"] for r in shares}
        self._round = _Round(index, {u: adverts[u] for u in sealed}, threshold, base, graph)

        def relay(v: int) -> Arrays:
            senders = [u for u in sorted(sealed) if v in targets(u)]
            rows = [sealed[u][targets(u).index(v)] for u in senders]
            return {
                **(parameters or {}),
                secagg.SENDERS: np.array(senders, dtype=np.int64),
                secagg.SHARES: np.array(rows, dtype=np.uint8).reshape(-1, secagg.SEALED_BYTES),
            }

        return [Instruction(p, own[p], relay(index[p])) for p in index if index[p] in sealed]

    def check_update(self, arrays: Arrays, n_features: int) -> None:
        """int64 ring elements shaped like an update of the inner model, plus the weight."""
        if secagg.WEIGHT not in arrays or arrays[secagg.WEIGHT].shape != ():
            raise UpdateError(f"a masked update must carry one {secagg.WEIGHT!r}")
        if any(a.dtype != np.int64 for a in arrays.values()):
            raise UpdateError("a masked update holds int64 ring elements only")
        shapes = {k: np.zeros(a.shape) for k, a in arrays.items() if k != secagg.WEIGHT}
        self.inner.check_update(shapes, n_features)

    def aggregate_fit(self, server_round, results, failures, current):
        total = self._total(server_round, results)
        if total is None or self._round is None:
            self._fit_unmasked = None
            return None
        name = {i: p for p, i in self._round.index.items()}
        masked, lost = self._round.parted(results)
        self._fit_unmasked = ([name[i] for i in masked], [name[i] for i in lost])
        sums = vectors.unflatten(total, results[0].arrays)
        weight = float(sums.pop(secagg.WEIGHT))
        return {k: v / weight for k, v in sums.items()}

    def configure_evaluate(self, server_round, parameters, provinces):
        """Scores leave masked, as sums over each province's test rows (common/forecast.py), in
        the statistics' wide encoding: the server unmasks the federation's totals only."""
        return self._open(server_round, provinces, parameters, "wide")

    def check_evaluation(self, result: ClientResult) -> None:
        limbs = secagg.WideEncoding(len(self._round.index) if self._round else 1).limbs
        shape = (len(forecast.MEANS), limbs)
        _expect(result.arrays, {name: (np.dtype(np.int64), shape) for name in SCORE_SUMS})

    def aggregate_evaluate(self, server_round, results, failures):
        total = self._total(server_round, results)
        if total is None:
            return None
        like = {name: np.empty(len(forecast.MEANS)) for name in SCORE_SUMS}
        rows = {r.province: r.num_examples for r in results}
        return Evaluation.aggregated(vectors.unflatten(total, like), rows, HIDDEN)

    def disclosure(self):
        masked = (
            "securely aggregated: masked uploads, of which only the sum over the survivors "
            "(a majority of the phase's provinces, who confirm them) can be unmasked; which "
            "provinces took part, and each one's row count, in the clear"
        )
        return {
            **self.inner.disclosure(),
            "dates": entry(f"{DATE_COUNTS}, summed over the provinces, {masked}", CUTOFF),
            "statistics": entry(f"the sums of n, Σz and Σzzᵀ over the provinces, {masked}", SCALER),
            "updates": entry(
                f"the sample-weighted average of the round's updates, {masked}",
                "the global model after each round",
            ),
            "metrics": entry(
                "the federation's test scores (MSE, MAE, direction and the naive forecasts' MSEs "
                f"summed over every test row), {masked}; no province's own score",
                "nothing of any other province",
            ),
        }

    def round_disclosure(self, server_round, asked, sent):
        """The sum over the survivors, who dropped after sharing its keys (its masks removed
        from the survivors' shares), or that no sum was unmasked."""
        graph = f"SecAgg+, {self.neighbours} neighbours each" if self.neighbours else "SecAgg"
        unmasked = self._fit_unmasked
        if unmasked is None:
            server = (
                f"masked updates from {contributors(asked, sent)} under secure aggregation "
                f"({graph}); no sum was unmasked, the global model is unchanged"
            )
            return entry(server, "the global model, unchanged")
        survivors, dropped = unmasked
        server = (
            f"the sample-weighted sum over {len(survivors)} of {len(asked)} provinces asked "
            f"under secure aggregation ({graph}), no single update"
        )
        if dropped:
            their = "its" if len(dropped) == 1 else "their"
            server += f"; {', '.join(dropped)} dropped after sharing keys, {their} masks recovered"
        return entry(server, "the global model after the round")

    def gather_statistics(self, provinces, shapes, check, plausible, config=None):
        """The statistics (n, Σz and Σzzᵀ, or the day counts) summed under the protocol: the
        server never holds one province's, and checks the sum only."""
        plan = [
            replace(i, config={**i.config, **(config or {})})
            for i in self._open(0, provinces, None, "wide")
        ]
        limbs = secagg.WideEncoding(len(provinces)).limbs
        masked = {name: (np.dtype(np.int64), (*shape, limbs)) for name, shape in shapes.items()}

        def accept(result: ClientResult) -> ClientResult:
            check(result)
            _expect(result.arrays, masked)
            return result

        results, _ = self.run_phase(0, pb.TASK_KIND_STATISTICS, plan, accept)
        total = self._total(0, results)
        templates = {k: np.empty(s) for k, s in shapes.items()}
        sums = None if total is None else vectors.unflatten(total, templates)
        return checked_sums(results, sums, plausible)

    def _total(self, server_round: int, results: list[ClientResult]) -> np.ndarray | None:
        """The sum of the masked inputs in `results`, once the survivors confirmed them and
        revealed the shares that remove the masks; None when the protocol cannot finish."""
        state = self._round
        if state is None or len(results) < state.threshold:
            return None
        masked = {state.index[r.province]: secagg.join_input(r.arrays) for r in results}
        survivors, lost = (",".join(map(str, seats)) for seats in state.parted(results))
        helpers = {p: i for p, i in state.index.items() if i in masked}

        def unmasking(step: str, index: int) -> dict[str, ConfigScalar]:
            asked = secagg.Unmasking(survivors, lost, step)
            return {**state.config, **secagg.Seat(index).to_config(), **asked.to_config()}

        confirmations = self._ask(
            server_round,
            pb.TASK_KIND_SECAGG_UNMASK,
            {p: (unmasking("confirm", i), None) for p, i in helpers.items()},
            _checked({"signature": (np.dtype(np.uint8), (-1,))}),
        )
        if len(confirmations) <= len(state.index) // 2:
            # Clients reveal shares only once a majority of the round confirms the same survivors.
            log.warning(
                "round %d: only %d survivors confirmed the survivor set, not a majority of %d",
                server_round,
                len(confirmations),
                len(state.index),
            )
            return None
        signatures = secagg.pack_signatures(
            {state.index[r.province]: r.arrays["signature"].tobytes() for r in confirmations}
        )
        confirmed = {r.province: helpers[r.province] for r in confirmations}
        replies = self._ask(  # only those who confirmed: one who did not is gone or deviating
            server_round,
            pb.TASK_KIND_SECAGG_UNMASK,
            {p: (unmasking("reveal", i), signatures) for p, i in confirmed.items()},
            _checked(
                {
                    "for": (np.dtype(np.int64), (-1,)),
                    "shares": (np.dtype(np.uint8), (-1, secagg.SHARE_BYTES)),
                }
            ),
        )
        shares = {
            state.index[r.province]: {
                int(u): int.from_bytes(s.tobytes())
                for u, s in zip(r.arrays["for"], r.arrays["shares"], strict=True)
            }
            for r in replies
        }
        encoding = secagg.encoding_for(state.config)
        try:
            total = secagg.aggregate(
                encoding, state.threshold, state.adverts, masked, shares, state.graph
            )
        except (secagg.SecAggError, KeyError) as error:
            log.warning("round %d: cannot unmask the sum: %s", server_round, error)
            return None
        return total
