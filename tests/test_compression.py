"""Compressed updates: small on the wire, close to the step, and nothing lost for good."""

import numpy as np
import pytest

from common import compression
from common.compression import INDICES, SCALE, VALUES, ErrorFeedback, decode, encode
from common.launch import LocalFederation
from common.models import linear
from common.models.checks import UpdateError
from common.protection import Compression
from common.provinces import PROVINCES
from server.strategies.compressed import Compressed
from server.strategy import ClientResult, FedAvg
from tests.test_federation import FAST, ROWS, SEED, centralised_fit, federation_splits

STEP = np.random.default_rng(0).normal(size=1000)


@pytest.mark.parametrize(
    ("method", "nbytes", "tolerance"),
    [("float16", 2000, 1e-3), ("int8", 1008, 0.02), ("topk", 800, None)],
)
def test_each_method_shrinks_the_step_and_decodes_close_to_it(method, nbytes, tolerance):
    sent = encode(STEP, method, topk_fraction=0.1)
    assert sum(a.nbytes for a in sent.values()) == nbytes  # float64 would be 8000
    back = decode(sent, method, len(STEP))
    if tolerance is not None:
        assert np.max(np.abs(back - STEP)) < tolerance * np.max(np.abs(STEP))
    else:  # top-k keeps the largest tenth exactly (as float32) and zeroes the rest
        kept = np.abs(STEP) >= np.sort(np.abs(STEP))[-100]
        np.testing.assert_allclose(back[kept], STEP[kept], rtol=1e-6)
        assert np.count_nonzero(back) == 100


def test_error_feedback_delivers_the_dropped_part_later():
    feedback = ErrorFeedback()
    delivered = np.zeros_like(STEP)
    for _ in range(30):
        delivered += decode(feedback.encode(STEP, "topk", 0.1), "topk", len(STEP))
    # After n rounds the server has n·step minus what is still held back, which stays bounded.
    np.testing.assert_allclose(delivered + feedback.residual, 30 * STEP)
    assert np.linalg.norm(feedback.residual) < 0.2 * np.linalg.norm(30 * STEP)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({VALUES: np.zeros(3, np.float16)}, "has 3 values"),
        ({VALUES: np.zeros(4)}, "vector of float16"),
        ({VALUES: np.full(4, np.inf, np.float16)}, "infinite"),
        ({VALUES: np.zeros(4, np.float16), SCALE: np.asarray(1.0)}, "carry tensors"),
    ],
)
def test_decode_refuses_what_cannot_be_a_step(arrays, message):
    with pytest.raises(compression.CompressionError, match=message):
        decode(arrays, "float16", 4)


def test_decode_refuses_bad_indices_and_scales():
    values = np.ones(2, np.float32)
    for indices in ([0, 9], [1, 1], [-1, 0]):
        arrays = {INDICES: np.array(indices, np.int32), VALUES: values}
        with pytest.raises(compression.CompressionError, match="indices"):
            decode(arrays, "topk", 4)
    bad_scale = {VALUES: np.zeros(4, np.int8), SCALE: np.asarray(-1.0)}
    with pytest.raises(compression.CompressionError, match="scale"):
        decode(bad_scale, "int8", 4)


def test_server_decodes_against_the_weights_it_sent_and_counts_bytes():
    strategy = Compressed(FedAvg({"model": "lr"}, check=linear.check_weights), "int8", 0.1)
    current = {"coef": np.array([1.0, 2.0]), "intercept": np.asarray(3.0)}
    plan = strategy.configure_fit(2, current, ["a"])
    assert plan[0].config["compression"] == "int8"
    client = ErrorFeedback()
    update = {"coef": np.array([1.5, 2.0]), "intercept": np.asarray(2.0)}
    sent = client.compress(update, current, Compression.from_config(plan[0].config))
    strategy.check_update(sent, 2)
    accepted = strategy.accept_fit(2, ClientResult("a", 5, {}, sent))
    np.testing.assert_allclose(accepted.arrays["coef"], [1.5, 2.0], atol=0.01)
    np.testing.assert_allclose(accepted.arrays["intercept"], 2.0, atol=0.01)
    assert strategy.round_report(2)["update_bytes"] == 3 + 8
    with pytest.raises(UpdateError, match="carry tensors"):
        strategy.check_update(update, 2)


@pytest.mark.integration
def test_int8_updates_over_nine_client_processes(tmp_path):
    federation = LocalFederation(
        tmp_path,
        "lr-sgd",
        3,
        ROWS,
        SEED,
        server_args=[*FAST, "--compression", "int8", "--local-epochs", "2"],
    )
    federation.start()
    codes = federation.wait(timeout=240)
    assert set(codes.values()) == {0}, codes
    rounds = federation.results()["rounds"]
    # After the first round each client sends 9 int8 values and one float64 scale.
    assert [r["update_bytes"] for r in rounds[1:]] == [9 * (9 + 8)] * 2
    # lr-sgd starts next to the answer (zero weights predict today's close): int8 steps must
    # not lead it away from the least-squares fit on the union of the rows.
    assert rounds[-1]["mse"] < 1.01 * exact_test_mse()


def exact_test_mse() -> float:
    """The centralised least-squares fit's MSE over every province's test rows."""
    splits = federation_splits(PROVINCES).values()
    x_train = np.vstack([s.x_train for s in splits])
    mean, scale = x_train.mean(axis=0), x_train.std(axis=0)
    x_test = np.vstack([s.x_test for s in splits])
    y_test = np.concatenate([s.y_test for s in splits])
    return float(np.mean((centralised_fit().predict((x_test - mean) / scale) - y_test) ** 2))
