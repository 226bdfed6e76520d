"""The end-of-run analysis over a real server and nine real client processes.

Guangdong's client loads its rows from a Parquet file in which, over its training period,
every row's prices and volumes were moved to another stock-day: there its features say nothing
about its targets. FedAvg still averages its fit in, by its many rows, so the federation is
better off without it. Its test period is left intact, so every test row is scored fairly.
"""

import numpy as np
import pytest

from common.data import synthesize_province, write_provinces
from common.data.schema import FLOAT_COLUMNS
from common.launch import LocalFederation
from common.preprocess import NEXT_DAY_FEATURES
from common.provinces import PROVINCES
from server.summary import format_summary
from tests.test_federation import FAST, ROWS, SEED

pytestmark = pytest.mark.integration

NOISY = "guangdong"


def noise_province(folder):
    """NOISY's rows, those of the training period with their numbers moved to other rows'."""
    frame = synthesize_province(NOISY, ROWS, SEED)
    columns = [*FLOAT_COLUMNS, "paused"]
    past = np.flatnonzero(frame["date"] < frame["date"].quantile(0.75))
    shuffled = np.random.default_rng(0).permutation(past)
    frame.loc[past, columns] = frame.loc[shuffled, columns].to_numpy()
    write_provinces({NOISY: frame}, folder)
    return folder


def test_contributions_importance_and_personalisation_of_a_federation_with_a_noisy_province(
    tmp_path,
):
    flags = ["--contributions", "--importance", "--importance-repeats", "2", "--personalise"]
    federation = LocalFederation(tmp_path / "run", "lr", 1, ROWS, SEED, server_args=[*FAST, *flags])
    data = noise_province(tmp_path / "data")
    federation.start_server()
    for province in PROVINCES:
        federation.start_client(province, *(["--data", str(data)] if province == NOISY else []))
    codes = federation.wait(timeout=240)
    assert codes == {name: 0 for name in ["server", *PROVINCES]}, codes
    results = federation.results()
    assert results["analysis"]["provinces"] == sorted(PROVINCES)

    value = results["contributions"]
    assert value["mse_all"] == pytest.approx(results["final"]["mse"], rel=1e-9)
    fall = value["mse_empty"] - value["mse_all"]
    assert sum(value["shapley"].values()) == pytest.approx(fall, rel=1e-9)
    loo = value["leave_one_out"]
    assert set(loo) == set(value["shapley"]) == set(PROVINCES)
    # The federation is better off without the noise, and values it least.
    assert loo[NOISY] < 0 and loo[NOISY] == min(loo.values())
    assert value["shapley"][NOISY] == min(value["shapley"].values())
    assert value["permutations"] == 27  # 20 rounded up to three rotation sets of nine

    ranked = results["importance"]["features"]
    assert set(ranked) == set(NEXT_DAY_FEATURES)
    assert (
        max(ranked["close"]["importance"], ranked["price"]["importance"])
        > (ranked["volume"]["importance"])
    )
    assert all(len(score["permuted_mse"]) == 2 for score in ranked.values())

    personal = results["personalisation"]["per_client"]
    assert set(personal) == set(PROVINCES)
    for province, score in personal.items():
        final = results["final"]["per_client"][province]["mse"]
        assert score["global_mse"] == pytest.approx(final, rel=1e-9)
        assert np.isfinite(score["personal_mse"]) and score["personal_mse"] >= 0
    summary = format_summary(results)
    for heading in ("contributions to the global test MSE", "permutation importance"):
        assert heading in summary
    assert "personalisation: least squares on the province's training rows pulled" in summary
