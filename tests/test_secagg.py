"""Secure aggregation: masks cancel in the sum, dropouts are recovered, one input looks random."""

import numpy as np
import pytest
from scipy import stats

from common.secagg import Client, Encoding, SecAggError, aggregate, combine, split

N, THRESHOLD, SIZE = 9, 5, 2_000


def updates(seed=0):
    rng = np.random.default_rng(seed)
    return {i: rng.normal(0, 30, size=SIZE) for i in range(1, N + 1)}


def run_round(inputs, drop_before_input=(), drop_before_unmask=()):
    """The protocol's four steps in process, with the server relaying everything."""
    encoding = Encoding(bound=1_000.0, clients=N)
    clients = {i: Client(i, encoding, THRESHOLD) for i in inputs}
    adverts = {i: c.advertise() for i, c in clients.items()}
    outboxes = {u: c.share(adverts) for u, c in clients.items()}
    masked = {
        v: c.masked_input(inputs[v], {u: box[v] for u, box in outboxes.items() if u != v})
        for v, c in clients.items()
        if v not in drop_before_input
    }
    dropped = set(adverts) - set(masked)
    replies = {
        v: clients[v].unmask(set(masked), dropped) for v in masked if v not in drop_before_unmask
    }
    return aggregate(encoding, THRESHOLD, adverts, masked, replies), masked, encoding


def test_the_unmasked_sum_equals_the_plain_sum_to_the_encoding_precision():
    inputs = updates()
    total, _, encoding = run_round(inputs)
    tolerance = N * 2.0 ** -(encoding.fraction_bits + 1)
    np.testing.assert_allclose(total, sum(inputs.values()), rtol=0, atol=tolerance)


@pytest.mark.parametrize("dropped", [(4,), (2, 9)])
def test_the_round_completes_when_clients_drop_before_sending_their_input(dropped):
    inputs = updates(1)
    total, _, _ = run_round(inputs, drop_before_input=dropped)
    expected = sum(x for i, x in inputs.items() if i not in dropped)
    np.testing.assert_allclose(total, expected, rtol=0, atol=1e-5)


def test_clients_that_vanish_after_sending_their_input_are_still_counted():
    inputs = updates(2)
    total, _, _ = run_round(inputs, drop_before_input=(1,), drop_before_unmask=(3, 5))
    expected = sum(x for i, x in inputs.items() if i != 1)
    np.testing.assert_allclose(total, expected, rtol=0, atol=1e-5)


def test_too_few_survivors_cannot_unmask():
    with pytest.raises(SecAggError):
        run_round(updates(), drop_before_input=(1, 2, 3, 4, 5))


def test_the_servers_view_of_one_input_is_uniform_noise():
    inputs = updates(3)
    _, masked, encoding = run_round(inputs)
    view = masked[1].astype(np.float64) / float(1 << encoding.bits)
    assert not np.array_equal(masked[1], encoding.encode(inputs[1]))
    assert stats.kstest(view, "uniform").pvalue > 1e-3
    assert abs(stats.pearsonr(view, inputs[1]).statistic) < 0.1


def test_a_client_never_reveals_both_secrets_of_one_client():
    encoding = Encoding(bound=1.0, clients=3)
    clients = {i: Client(i, encoding, 2) for i in (1, 2, 3)}
    adverts = {i: c.advertise() for i, c in clients.items()}
    for c in clients.values():
        c.share(adverts)
    with pytest.raises(SecAggError):
        clients[1].unmask({1, 2}, {2})


def test_shamir_needs_threshold_shares_and_any_threshold_will_do():
    shares = split(123456789, [1, 2, 3, 4, 5], threshold=3)
    assert combine({k: shares[k] for k in (1, 4, 5)}) == 123456789
    assert combine({k: shares[k] for k in (2, 3)}) != 123456789


def test_the_bit_width_grows_with_the_number_of_clients():
    assert Encoding(1_000.0, 9).bits < Encoding(1_000.0, 1_000).bits
    with pytest.raises(ValueError):
        Encoding(1.0, 9).encode(np.array([2.0]))
