"""Hostile participants against a real server and real honest client processes (lr-exact).

Every lie is refused with INVALID_ARGUMENT and a reason, and the honest provinces' model comes
out as if the liar had not spoken.
"""

import math

import grpc
import numpy as np
import pytest

from proto.fedstock.v1 import federation_pb2 as pb
from server.localrun import LocalFederation
from tests.hostile import Liar, Lie, statistics_shapes
from tests.test_federation import FAST, ROWS, SEED, centralised_fit

pytestmark = pytest.mark.integration

HONEST = ("hubei", "fujian")
COLUMNS = 9  # next-day: eight features and the target


def absurd_numbers() -> list[Lie]:
    """The issue's finite-but-absurd outcomes, one per task the liar is given, in order."""
    shapes = statistics_shapes(COLUMNS)
    update = {"xtx": np.eye(COLUMNS), "xty": np.zeros(COLUMNS)}
    return [
        Lie(1000, {}, {**shapes, "count": np.array(1e300)}),  # statistics
        Lie(1000, {"train_mse": 1.7e308}, update),  # round 1: train
        Lie(1000, {"mse": 1.7e308}),  # round 1: evaluate
        Lie(2**63, {"train_mse": 0.0}, update),  # round 2: train
        Lie(2**63, {"mse": 0.0}),  # round 2: evaluate
    ]


def test_absurd_numbers_are_refused_and_the_honest_model_is_untouched(tmp_path):
    federation = LocalFederation(
        tmp_path,
        "lr-exact",
        2,
        ROWS,
        SEED,
        provinces=HONEST,
        server_args=[*FAST, "--min-available", "3"],
        insecure=True,
    )
    federation.start_server()
    lies = iter(absurd_numbers())
    liar = Liar(federation.address, "shanghai", 1000, lambda task: next(lies, None))
    liar.start()
    assert liar.joined.wait(timeout=120), liar.error
    for province in HONEST:
        federation.start_client(province)
    codes = federation.wait(timeout=300)
    liar.join(timeout=60)
    assert codes == {"server": 0, **{p: 0 for p in HONEST}}, codes
    assert liar.error is None, liar.error
    kinds = [pb.TASK_KIND_STATISTICS, *[pb.TASK_KIND_TRAIN, pb.TASK_KIND_EVALUATE] * 2]
    assert [(k, c) for k, c, _ in liar.refusals] == [
        (k, grpc.StatusCode.INVALID_ARGUMENT) for k in kinds
    ], liar.refusals
    reasons = [why for *_, why in liar.refusals]
    assert "count" in reasons[0] and "train_mse" in reasons[1] and "'mse'" in reasons[2]
    assert all("declared at Join" in why for why in reasons[3:])
    results = federation.results()
    assert set(results["statistics"]["train_samples"]) == set(HONEST)
    for record in results["rounds"]:
        assert record["clients"] == sorted(HONEST)
        assert {f["province"] for f in record["failures"]} == {"shanghai"}
        assert set(record["per_client"]) == set(HONEST) and math.isfinite(record["mse"])
    model = np.load(tmp_path / "model.npz")
    central = centralised_fit(provinces=HONEST)
    np.testing.assert_allclose(model["coef"], central.coef_, rtol=1e-6)
    np.testing.assert_allclose(model["intercept"], central.intercept_, rtol=1e-6)
    per_client = results["final"]["per_client"]
    total = sum(s["n_test"] for s in per_client.values())
    honest_mse = sum(s["mse"] * s["n_test"] for s in per_client.values()) / total
    assert results["final"]["mse"] == pytest.approx(honest_mse, rel=1e-12)
