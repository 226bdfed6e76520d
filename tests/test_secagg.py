"""Secure aggregation: masks cancel in the sum, dropouts are recovered, one input looks random."""

import logging
import math
import signal

import numpy as np
import pytest
from scipy import stats

from client.chain import TRAIN, Outcome, Task
from client.groups import TaskGroups
from client.privacy import ClientPrivacy
from client.secagg import SecAggClient
from common.keysign import Identity, KeyAuthenticationError
from common.launch import LocalFederation
from common.models import linear
from common.provinces import PROVINCES
from common.secagg import (
    Client,
    Encoding,
    SecAggError,
    WideEncoding,
    aggregate,
    combine,
    exchange_sum,
    neighbours,
    split,
)
from proto.fedstock.v1 import federation_pb2 as pb
from server.__main__ import parse_args
from server.certs import DEFAULT_SERVER_NAMES, write_federation
from server.privacy.secagg import SecAggFedAvg
from server.strategy import ClientResult, Failure, FedAvg

N, THRESHOLD, SIZE = 9, 5, 2_000


def updates(seed=0):
    rng = np.random.default_rng(seed)
    return {i: rng.normal(0, 30, size=SIZE) for i in range(1, N + 1)}


def run_round(inputs, drop_before_input=(), drop_before_unmask=(), graph=None, threshold=THRESHOLD):
    """The protocol's four steps in process, with the server relaying everything; on `graph`'s
    edges only (SecAgg+) when given."""
    encoding = Encoding(bound=1_000.0, clients=N)
    clients = {i: Client(i, encoding, threshold, graph and graph[i]) for i in inputs}
    adverts = {i: c.advertise() for i, c in clients.items()}
    outboxes = {u: c.share(adverts) for u, c in clients.items()}
    masked = {
        v: c.masked_input(inputs[v], {u: box[v] for u, box in outboxes.items() if v in box})
        for v, c in clients.items()
        if v not in drop_before_input
    }
    dropped = set(adverts) - set(masked)
    replies = {
        v: clients[v].unmask(set(masked), dropped) for v in masked if v not in drop_before_unmask
    }
    return aggregate(encoding, threshold, adverts, masked, replies, graph), masked, encoding


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


# SecAgg+: masks and shares on a sparse graph's edges only.


def test_the_graph_is_k_regular_symmetric_and_fixed_by_its_seed():
    graph = neighbours(30, 6, seed=11)
    assert all(len(graph[u]) == 6 and u not in graph[u] for u in graph)
    assert all(u in graph[v] for u in graph for v in graph[u])
    assert graph == neighbours(30, 6, seed=11) != neighbours(30, 6, seed=12)
    assert neighbours(9, 8, seed=1)[1] == set(range(2, 10))  # k = n − 1: every pair
    with pytest.raises(ValueError, match="even"):
        neighbours(30, 5, seed=1)


@pytest.mark.parametrize(("before_input", "before_unmask"), [((), ()), ((2, 9), ()), ((1,), (3,))])
def test_a_sparse_graph_round_recovers_from_dropouts(before_input, before_unmask):
    """k = 4 of 8 others, threshold 3 of each neighbourhood of 5: any two clients may go."""
    inputs = updates(5)
    graph = neighbours(N, 4, seed=3)
    total, _, _ = run_round(inputs, before_input, before_unmask, graph, threshold=3)
    expected = sum(x for i, x in inputs.items() if i not in before_input)
    np.testing.assert_allclose(total, expected, rtol=0, atol=1e-5)


def test_a_sparse_graph_round_fails_safely_when_a_neighbourhood_is_gone():
    graph = neighbours(N, 4, seed=3)
    gone = (*sorted(graph[1])[:3], 1)  # client 1 and three of its four neighbours
    with pytest.raises(SecAggError):
        run_round(updates(6), drop_before_input=gone, graph=graph, threshold=3)


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--secagg-neighbours", "3"], "even number"),
        (["--secagg-neighbours", "4", "--secagg-threshold", "6"], "cannot exceed"),
        (["--secagg-neighbours", "4", "--secagg-threshold", "2"], "must be a majority"),
    ],
)
def test_the_server_refuses_a_graph_it_cannot_use(flags, says, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--privacy", "secagg", *flags])
    assert says in capsys.readouterr().err


def test_the_bit_width_grows_with_the_number_of_clients():
    assert Encoding(1_000.0, 9).bits < Encoding(1_000.0, 1_000).bits
    with pytest.raises(ValueError):
        Encoding(1.0, 9).encode(np.array([2.0]))


# The protocol as a --privacy mode: the strategy's phases, with clients in process or as processes.

PROVINCE_UPDATES = {p: updates(4)[i + 1][:9] for i, p in enumerate(PROVINCES)}
SAMPLES = {p: 100 * (i + 1) for i, p in enumerate(PROVINCES)}


def as_update(vector):
    return {"coef": vector[:8].copy(), "intercept": np.array(vector[8])}


def in_process_round(
    dropped=(), identities=None, relay=lambda province, adverts: adverts, **options
):
    """One round of SecAggFedAvg whose phases are answered by ClientPrivacy objects in process;
    `identities` sign and check the keys, which pass through `relay` on their way to each."""
    identities = identities or {}
    clients = {p: ClientPrivacy(identity=identities.get(p)) for p in PROVINCES}
    steps = {
        pb.TASK_KIND_SECAGG_KEYS: lambda c, i: c.secagg.keys(TaskGroups.parse(i.config)),
        pb.TASK_KIND_SECAGG_SHARES: lambda c, i: c.secagg.shares(
            TaskGroups.parse(i.config), relay(i.province, i.parameters)
        ),
        pb.TASK_KIND_SECAGG_UNMASK: lambda c, i: c.secagg.unmask(
            TaskGroups.parse(i.config), i.parameters
        ),
    }

    def train(c, i):
        update = Outcome(SAMPLES[i.province], {}, as_update(PROVINCE_UPDATES[i.province]))
        return c.run(
            Task(TRAIN, TaskGroups.parse(i.config), i.parameters), lambda task: update
        ).arrays

    def run(server_round, kind, plan, accept):
        results, failures = [], []
        for i in plan:
            if kind == pb.TASK_KIND_TRAIN and i.province in dropped:
                failures.append(Failure(i.province, "dropped out"))
                continue
            arrays = (steps.get(kind) or train)(clients[i.province], i)
            results.append(accept(ClientResult(i.province, SAMPLES[i.province], {}, arrays)))
        return results, failures

    strategy = SecAggFedAvg(FedAvg({"model": "lr"}, linear.check_weights), **options)
    strategy.bind_phases(run)
    plan = strategy.configure_fit(1, None, list(PROVINCES))

    def accept(result):
        strategy.check_update(result.arrays, 8)
        return result

    results, failures = run(1, pb.TASK_KIND_TRAIN, plan, accept)
    return strategy.aggregate_fit(1, results, failures, None), results


@pytest.mark.parametrize("dropped", [(), ("sichuan",), ("hubei", "shanghai")])
@pytest.mark.parametrize("options", [{}, {"neighbours": 4, "threshold": 3}])
def test_secagg_fedavg_unmasks_the_weighted_average_of_whoever_stayed(dropped, options):
    merged, results = in_process_round(dropped, **options)
    stayed = [p for p in PROVINCES if p not in dropped]
    total = sum(SAMPLES[p] for p in stayed)
    expected = sum(PROVINCE_UPDATES[p] * SAMPLES[p] for p in stayed) / total
    np.testing.assert_allclose(merged["coef"], expected[:8], rtol=0, atol=1e-6)
    assert float(merged["intercept"]) == pytest.approx(expected[8], abs=1e-6)
    assert all(r.arrays["coef"].dtype == np.int64 for r in results)


# Signed keys: a relay that substitutes a client's keys is caught before any mask is derived.


@pytest.fixture(scope="module")
def identities(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    write_federation(folder, DEFAULT_SERVER_NAMES, PROVINCES)
    return {p: Identity.load(folder, p) for p in PROVINCES}


def test_signed_keys_give_the_same_sum(identities):
    merged, _ = in_process_round(identities=identities)
    total = sum(SAMPLES.values())
    expected = sum(PROVINCE_UPDATES[p] * SAMPLES[p] for p in PROVINCES) / total
    np.testing.assert_allclose(merged["coef"], expected[:8], rtol=0, atol=1e-6)


def substitute_mask_key(victim_index):
    """A hostile relay: its own X25519 mask key in place of one client's, for everyone else."""

    def relay(province, adverts):
        forged = {k: v.copy() for k, v in adverts.items()}
        row = list(forged["index"]).index(victim_index)
        forged["keys"][row, 1] = np.frombuffer(
            Client(99, Encoding(1.0, 9), 5).advertise()[1], np.uint8
        )
        return forged

    return relay


def test_a_substituted_key_is_refused_before_any_mask(identities):
    with pytest.raises(KeyAuthenticationError, match="do not match their signature"):
        in_process_round(identities=identities, relay=substitute_mask_key(3))


def test_a_bundle_under_another_provinces_name_or_from_another_ca_is_refused(identities, tmp_path):
    beijing, hubei = identities["beijing"], identities["hubei"]
    keys = bytes(range(64))
    signature = beijing.sign(4, 1, keys)
    hubei.verify(4, 1, "beijing", keys, signature, beijing.certificate)  # the honest bundle
    with pytest.raises(KeyAuthenticationError, match="'beijing'"):
        hubei.verify(4, 1, "fujian", keys, signature, beijing.certificate)
    with pytest.raises(KeyAuthenticationError, match="do not match"):
        hubei.verify(5, 1, "beijing", keys, signature, beijing.certificate)  # replayed
    write_federation(tmp_path, DEFAULT_SERVER_NAMES, ("beijing",))
    stranger = Identity.load(tmp_path, "beijing")
    with pytest.raises(KeyAuthenticationError, match="CA did not issue"):
        hubei.verify(4, 1, "beijing", keys, stranger.sign(4, 1, keys), stranger.certificate)


def test_unsigned_keys_are_refused_by_a_client_with_a_certificate(identities):
    signed_only = dict(identities)
    del signed_only["hubei"]  # hubei sends its keys without a signature
    with pytest.raises(KeyAuthenticationError, match="readable certificate"):
        in_process_round(identities=signed_only)


def test_without_a_certificate_the_client_warns_its_keys_are_unauthenticated(caplog):
    config = {
        "round": 1,
        "secagg_bound": 1.0,
        "secagg_clients": 3,
        "secagg_threshold": 2,
        "secagg_index": 1,
        "secagg_session": "a1",
    }
    with caplog.at_level(logging.WARNING, logger="fedstock.client"):
        keys = SecAggClient().keys(TaskGroups.parse(config))
    assert keys["signature"].size == 0 and "UNAUTHENTICATED" in caplog.text


@pytest.mark.integration
@pytest.mark.parametrize("graph", [[], ["--secagg-neighbours", "4", "--secagg-threshold", "3"]])
def test_a_secagg_federation_survives_two_clients_dying_mid_round(tmp_path, graph):
    """hubei and shanghai die (SIGKILL) on receiving their training task: after sharing their
    keys and secrets, before sending their masked updates. Every pair masked, or SecAgg+ with
    four neighbours each, where any two of a neighbourhood of five may go."""
    # The victims' phase waits out its deadline; the others only fail when something is broken,
    # so they are generous enough for nine processes on a loaded machine.
    flags = ["--poll-seconds", "1", "--round-timeout", "120", "--join-timeout", "900"]
    flags += ["--min-clients", "7", "--min-available", "9", "--privacy", "secagg", *graph]
    victims = ("hubei", "shanghai")
    survivors = sorted(set(PROVINCES) - set(victims))
    federation = LocalFederation(
        tmp_path, "lr", 1, 20_000, 3, provinces=tuple(survivors), server_args=flags
    )
    federation.start()
    for victim in victims:
        federation.start_client(victim, "--vanish-at", "1:train:1", module="tests.vanishing_client")
    codes = federation.wait(timeout=1200)
    assert codes == {n: -signal.SIGKILL if n in victims else 0 for n in codes}, codes
    results = federation.results()
    record = results["rounds"][0]
    # The statistics went through the protocol too: nine provinces shared, none was lost there.
    assert "securely aggregated" in results["disclosure"]["statistics"]["server"]
    assert set(results["statistics"]["train_samples"]) == set(PROVINCES)
    assert math.isfinite(record["mse"]) and sorted(record["per_client"]) == survivors
    assert record["clients"] == survivors
    assert "unsigned" not in (tmp_path / "server.log").read_text()  # keys were signed
    # The round's own disclosure: the sum over the seven masked updates, the victims named as
    # dropped with their masks recovered.
    (said,) = results["disclosure"]["rounds"]
    assert said["server"].startswith("the sample-weighted sum over 7 of 9 provinces")
    assert "hubei, shanghai dropped after sharing" in said["server"]


# Against a deviating server (real gRPC attacks: tests/test_privacy_active_server.py).


def test_a_threshold_that_is_no_majority_of_the_group_is_refused():
    with pytest.raises(SecAggError, match="must be a majority"):
        Client(1, Encoding(1.0, 9), 4)
    with pytest.raises(SecAggError, match="must be a majority"):
        Client(1, Encoding(1.0, 9), 2, frozenset({2, 3, 4, 5}))


def test_each_step_runs_once_in_order():
    encoding = Encoding(bound=1.0, clients=3)
    clients = {i: Client(i, encoding, 2) for i in (1, 2, 3)}
    adverts = {i: c.advertise() for i, c in clients.items()}
    boxes = {u: c.share(adverts) for u, c in clients.items()}
    with pytest.raises(SecAggError, match="refusing to share after 'share'"):
        clients[1].share(adverts)
    relay = {u: box[1] for u, box in boxes.items() if 1 in box}
    clients[1].masked_input(np.zeros(4), relay)
    with pytest.raises(SecAggError, match="refusing to mask after 'mask'"):
        clients[1].masked_input(np.ones(4), relay)
    clients[1].unmask({1, 2, 3}, set())
    with pytest.raises(SecAggError, match="refusing to unmask after 'unmask'"):
        clients[1].unmask({1, 2}, {3})


def test_keys_relayed_in_place_of_a_clients_own_are_refused():
    encoding = Encoding(bound=1.0, clients=3)
    clients = {i: Client(i, encoding, 2) for i in (1, 2, 3)}
    adverts = {i: c.advertise() for i, c in clients.items()}
    adverts[1] = Client(1, encoding, 2).advertise()
    with pytest.raises(SecAggError, match="not this client's"):
        clients[1].share(adverts)


def test_a_session_is_run_once():
    config = {
        "round": 1,
        "secagg_bound": 1.0,
        "secagg_clients": 3,
        "secagg_threshold": 2,
        "secagg_index": 1,
        "secagg_session": "b2",
    }
    client = SecAggClient()
    client.keys(TaskGroups.parse(config))
    with pytest.raises(SecAggError, match="replayed round"):
        client.keys(TaskGroups.parse(config))
    with pytest.raises(SecAggError, match="replayed round"):
        client.keys(TaskGroups.parse({**config, "secagg_session": ""}))


def test_the_wide_encoding_sums_values_beyond_one_ring_element():
    wide = WideEncoding(9)
    values = np.array([3.5e25, -2.25e20, 0.0, 1.0 / 3])
    total = sum(
        (wide.encode(values) for _ in range(9)), np.zeros(len(values) * wide.limbs, np.uint64)
    )
    np.testing.assert_allclose(wide.decode(total), 9 * values, rtol=1e-12, atol=1e-4)
    with pytest.raises(ValueError, match="exceeds"):
        wide.encode(np.array([1e40]))


def agreed(graph=None, threshold=THRESHOLD):
    """Clients after the key agreement, and the shares relayed to each."""
    encoding = Encoding(bound=1_000.0, clients=N)
    clients = {i: Client(i, encoding, threshold, graph and graph[i]) for i in range(1, N + 1)}
    adverts = {i: c.advertise() for i, c in clients.items()}
    outboxes = {u: c.share(adverts) for u, c in clients.items()}
    relayed = {v: {u: box[v] for u, box in outboxes.items() if v in box} for v in clients}
    return clients, relayed, encoding


@pytest.mark.parametrize("graph", [None, neighbours(N, 4, 7)])
def test_many_exchanges_under_one_key_agreement_each_sum_exactly(graph):
    clients, relayed, encoding = agreed(graph, threshold=3 if graph else THRESHOLD)
    for exchange in (1, 2, 5):
        inputs = updates(exchange)
        masked = [
            c.exchange_input(inputs[i], relayed[i], exchange, b"question")
            for i, c in clients.items()
        ]
        total = exchange_sum(encoding, masked)
        assert np.allclose(total, sum(inputs.values()), atol=N * 2.0**-24)
        # Without one member the masks do not cancel: the rest's sum is noise.
        part = exchange_sum(encoding, masked[1:])
        assert not np.allclose(part, sum(inputs[i] for i in range(2, N + 1)), atol=1.0)


@pytest.mark.parametrize("graph", [None, neighbours(N, 4, 7)])
def test_after_a_member_leaves_the_survivors_exchanges_sum_exactly(graph):
    clients, relayed, encoding = agreed(graph, threshold=3 if graph else THRESHOLD)
    inputs = updates(1)
    masked = {i: c.exchange_input(inputs[i], relayed[i], 1, b"q") for i, c in clients.items()}
    # Member 1 never answers exchange 1: the survivors' inputs alone are noise ...
    survivors = sorted(set(clients) - {1})
    part = exchange_sum(encoding, [masked[i] for i in survivors])
    assert not np.allclose(part, sum(inputs[i] for i in survivors), atol=1.0)
    # ... and from the next exchange, told that 1 left, they mask among themselves.
    left = frozenset({1})
    for exchange in (2, 3):
        inputs = updates(exchange)
        masked_now = [
            clients[i].exchange_input(inputs[i], relayed[i], exchange, b"q", left)
            for i in survivors
        ]
        total = exchange_sum(encoding, masked_now)
        assert np.allclose(total, sum(inputs[i] for i in survivors), atol=N * 2.0**-24)
    with pytest.raises(SecAggError, match="forget the earlier ones"):
        clients[2].exchange_input(inputs[2], relayed[2], 4, b"q")
    with pytest.raises(SecAggError, match="name this client"):
        clients[3].exchange_input(inputs[3], relayed[3], 4, b"q", frozenset({1, 3}))


def test_members_leaving_below_the_threshold_are_refused():
    clients, relayed, _ = agreed()
    gone = frozenset(range(THRESHOLD, N + 1))  # leaves THRESHOLD - 1 members
    with pytest.raises(SecAggError, match="fewer peers than the threshold"):
        clients[1].exchange_input(np.ones(SIZE), relayed[1], 1, b"q", gone)


def test_each_exchange_masks_afresh_and_only_one_question_unmasks():
    clients, relayed, encoding = agreed()
    zeros = np.zeros(SIZE)
    first = clients[1].exchange_input(zeros, relayed[1], 1, b"q")
    second = clients[1].exchange_input(zeros, relayed[1], 2, b"q")
    # The same input under two exchange numbers: two unrelated masks, so no difference leaks.
    assert (
        stats.kstest(
            (second - first) & encoding.mask, stats.randint(0, 2**encoding.bits).cdf
        ).pvalue
        > 1e-4
    )
    # Members asked different questions get masks that do not cancel.
    inputs = updates(3)
    masked = [
        c.exchange_input(inputs[i], relayed[i], 3, b"q" if i > 1 else b"other")
        for i, c in clients.items()
    ]
    assert not np.allclose(exchange_sum(encoding, masked), sum(inputs.values()), atol=1.0)


def test_a_replayed_exchange_or_unmasking_after_exchanges_is_refused():
    clients, relayed, _ = agreed()
    clients[1].exchange_input(np.ones(SIZE), relayed[1], 4, b"q")
    for exchange in (4, 3):  # a second input under a used number would cancel its mask
        with pytest.raises(SecAggError, match="each exchange number masks one input"):
            clients[1].exchange_input(np.ones(SIZE), relayed[1], exchange, b"q")
    fewer = dict(list(relayed[1].items())[:-1])
    with pytest.raises(SecAggError, match="same peers"):
        clients[1].exchange_input(np.ones(SIZE), fewer, 5, b"q")
    with pytest.raises(SecAggError):  # no share of an exchanging client is ever revealed
        clients[1].unmask(set(range(1, N + 1)), set())
    with pytest.raises(SecAggError, match="threshold"):
        clients[2].exchange_input(np.ones(SIZE), dict(list(relayed[2].items())[:2]), 1, b"q")
