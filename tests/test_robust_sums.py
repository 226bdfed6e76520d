"""--robust-sums: a province whose lr-exact sums no rows of this market explain is left out."""

import numpy as np
import pytest

from common import preprocess
from common.data import synthesize_province
from common.models import linear
from server.localrun import LocalFederation
from server.robust_sums import inconsistent
from server.strategy import ClientResult
from tests.hostile import Liar, Lie, run_beside, statistics_shapes
from tests.test_federation import FAST, ROWS, SEED, centralised_fit

HONEST = ("hubei", "fujian", "sichuan")
COLUMNS = 9
POISON = Lie(
    1000, {}, {"xtx": 1e6 * np.eye(COLUMNS), "xty": np.full(COLUMNS, 1e9)}
)  # the sums: finite, well formed, and a round MSE of 1.9e7


def sums(province: str) -> ClientResult:
    """A province's normal equations on globally scaled rows, as its client would send them."""
    data = preprocess.split(synthesize_province(province, ROWS, SEED), "next-day")
    x = (data.x_train - data.x_train.mean(axis=0)) / data.x_train.std(axis=0)
    return ClientResult(province, len(data.y_train), {}, linear.normal_equations(x, data.y_train))


def test_only_the_province_no_rows_explain_is_left_out():
    honest = [sums(p) for p in ("hubei", "fujian", "sichuan", "shandong")]
    assert inconsistent(honest) == []
    liar = ClientResult("shanghai", POISON.num_examples, {}, POISON.arrays)
    assert inconsistent([*honest[:3], liar]) == ["shanghai"]
    assert inconsistent([*honest[:2], liar]) == []  # three provinces: nothing to compare with


@pytest.mark.integration
def test_a_liar_in_the_sums_is_left_out_and_the_honest_model_is_exact(tmp_path):
    federation = LocalFederation(
        tmp_path,
        "lr-exact",
        1,
        ROWS,
        SEED,
        provinces=HONEST,
        server_args=[*FAST, "--min-available", "4", "--robust-sums"],
        insecure=True,
    )
    federation.start_server()
    refused_statistics = Lie(1000, {}, {**statistics_shapes(COLUMNS), "count": np.array(1e300)})
    answers = {
        1: POISON,  # TRAIN
        2: Lie(100, {"mse": 0.05}),  # EVALUATE
        5: refused_statistics,  # STATISTICS: refused, so the scaler is the honest one
    }
    liar = Liar(federation.address, "shanghai", 1000, lambda task: answers.get(task.kind))
    run_beside(liar, federation, HONEST)
    [record] = federation.results()["rounds"]
    assert record["inconsistent"] == ["shanghai"]
    model = np.load(tmp_path / "model.npz")
    central = centralised_fit(provinces=HONEST)
    np.testing.assert_allclose(model["coef"], central.coef_, rtol=1e-6)
    np.testing.assert_allclose(model["intercept"], central.intercept_, rtol=1e-6)
