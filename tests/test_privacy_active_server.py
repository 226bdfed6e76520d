"""Secure aggregation and threshold HE as the server sees them: sums only, every attack refused.

The nine provinces are real client daemons with their own certificates, talking mutual-TLS gRPC
to a real coordinator over localhost. The server side is a test double: the real secure-
aggregation strategy, whose tasks pass through `tamper` on their way out, as a deviating
operator could change them, and which records everything the clients send back. Each attack
then tries to recover client 1's input from what the server holds. First, the statistics phase:
what each province sends is masked, and only the sum over the provinces can be unmasked. Last,
threshold HE: a server that asks for a second sum of the same round, without client 1, to
difference it out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from client.daemon import ClientDaemon
from client.groups import TaskGroups
from client.he_keys import read_share, write_keys
from client.he_record import DecryptionRecord
from client.local import LocalWork
from client.privacy import ClientPrivacy
from client.trainers import trainer_for
from common import paillier, preprocess, secagg, threshold
from common.data.synthetic import synthesize_province
from common.keysign import Identity
from common.launch import free_port
from common.models import linear
from common.preprocess import features_for
from common.provinces import PROVINCES
from common.tensors import Payload, to_tensor
from common.tls import client_credentials, server_credentials
from common.vectors import flatten
from common.wire import to_config
from proto.fedstock.v1 import federation_pb2 as pb
from server.__main__ import build_server
from server.certs import DEFAULT_SERVER_NAMES, write_federation
from server.checks import check_statistics
from server.coordinator import Assignment, Coordinator
from server.privacy.he import HEFedAvg
from server.privacy.secagg import SecAggFedAvg
from server.strategy import ClientResult, Failure, FedAvg, Instruction, Strategy

pytestmark = pytest.mark.integration

DATA = {"setting": "next-day", "test_fraction": 0.2, "seed": 0, "model": "lr"}
ROWS = 9_000
VICTIM = sorted(PROVINCES)[0]  # client 1: the provinces are numbered in sorted order
TASK_SECONDS = 600.0  # an upper bound only: a refusing client's task is closed when it exits


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    write_federation(folder, DEFAULT_SERVER_NAMES, PROVINCES)
    return folder


class DeviatingServer:
    """A coordinator the test drives by hand, nine daemons polling it, and a log of uploads."""

    def __init__(
        self,
        certificates,
        tamper=lambda kind, instruction: instruction,
        privacy: Callable[[str], ClientPrivacy] | None = None,
    ) -> None:
        self.tamper = tamper
        self.coordinator = Coordinator(poll_seconds=1)
        address = f"localhost:{free_port()}"
        credentials = server_credentials(certificates)
        self.server, _ = build_server(self.coordinator, address, 16, 1 << 26, credentials)
        self.server.start()
        self.errors: dict[str, Exception] = {}
        # Why each province failed a task, as the server was told (or saw it stop).
        self.refusals: dict[str, str] = {}
        # Every answer with the task it answered, as the server holds them.
        self.exchanges: list[tuple[int, Instruction, ClientResult]] = []
        self.threads = []
        for province in PROVINCES:
            chain = (
                privacy(province)
                if privacy
                else ClientPrivacy(identity=Identity.load(certificates, province))
            )
            work = LocalWork(synthesize_province(province, ROWS, 0), chain)
            daemon = ClientDaemon(
                province,
                address,
                client_credentials(certificates, province),
                work,
                connect_timeout=300,
                transfer_timeout=300,
                max_model_bytes=1 << 26,
            )
            thread = threading.Thread(target=self._serve, args=(province, daemon), daemon=True)
            thread.start()
            self.threads.append(thread)
        self.coordinator.wait_for_clients(len(PROVINCES), 300)
        features = features_for(DATA["setting"])
        self.scaler = pb.Scaler(
            features=features,
            mean=to_tensor("mean", np.zeros(len(features))),
            scale=to_tensor("scale", np.ones(len(features))),
        )

    def _serve(self, province: str, daemon: ClientDaemon) -> None:
        try:
            daemon.run()
        except Exception as error:  # a refusal: the client stops serving this server
            self.errors[province] = error

    def phase(self, server_round, kind, plan, accept):
        """The strategy's phase runner: tampered tasks out, every answer recorded."""
        phases, sent = {}, {}
        for instruction in plan:
            if instruction.province in self.errors:
                continue
            instruction = self.tamper(kind, instruction)
            sent[instruction.province] = instruction
            payload = Payload.encode(instruction.parameters) if instruction.parameters else None
            task = pb.Task(
                round=server_round,
                kind=kind,
                config=to_config({**DATA, **instruction.config}),
                scaler=self.scaler,
                parameters=payload.header if payload else None,
            )
            phases[instruction.province] = self.coordinator.send(
                server_round, kind, {instruction.province: Assignment(task, payload)}, accept, 600
            )
        while open_ := [
            p for province, p in phases.items() if p.waiting and province not in self.errors
        ]:
            self.coordinator.wait_any(open_, timeout=0.5)
        results = [r for p in phases.values() for r in p.results]
        self.exchanges += [(kind, sent[r.province], r) for r in results]
        reported = [f for p in phases.values() for f in p.failures]
        failures = reported + [
            Failure(p, str(self.errors[p]))
            for p in phases
            if p in self.errors and p not in {f.province for f in reported}
        ]
        self.refusals.update({f.province: f.reason for f in failures})
        return results, failures

    def secagg_round(
        self, strategy: Strategy, provinces: list[str] = PROVINCES, server_round: int = 1
    ):
        """A round of `strategy` from no model through this server; the new model, if any."""
        strategy.bind_phases(self.phase)
        plan = strategy.configure_fit(server_round, None, list(provinces))

        def accept(result):
            strategy.check_update(result.arrays, len(self.scaler.features))
            return result

        results, failures = self.phase(server_round, pb.TASK_KIND_TRAIN, plan, accept)
        return strategy.aggregate_fit(server_round, results, failures, None)

    def close(self) -> None:
        self.coordinator.stop("the test is over", failed=False, grace_seconds=30)
        for thread in self.threads:
            thread.join(timeout=60)
        self.server.stop(grace=0)


@pytest.fixture
def deviating(certificates):
    servers = []

    def start(tamper=lambda kind, instruction: instruction, privacy=None):
        servers.append(DeviatingServer(certificates, tamper, privacy))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def strategy(**options) -> SecAggFedAvg:
    return SecAggFedAvg(FedAvg({"model": "lr"}, linear.check_weights), **options)


def victims_input() -> np.ndarray:
    """What client 1 masks: its sample-weighted LR update and its weight, as the ring's values."""
    data = LocalWork(synthesize_province(VICTIM, ROWS, 0)).split(TaskGroups.parse(DATA))
    update = trainer_for("lr").fit(data.x_train, data.y_train, None, TaskGroups.parse(DATA))
    n = len(data.y_train)
    return flatten({**{k: v * n for k, v in update.items()}, secagg.WEIGHT: np.array(float(n))})


def index(province: str) -> int:
    return sorted(PROVINCES).index(province) + 1


def recover_victim(server: DeviatingServer, threshold: int) -> np.ndarray | None:
    """The attack's goal: client 1's input, from its masked input, its self seed (rebuilt from
    the shares of clients told it survived) and, for the peers it masked with, its mask key
    (rebuilt from the shares of clients told it dropped); None when the server lacks either."""
    masked, seeds, keys, adverts = None, {}, {}, {}
    for kind, told, result in server.exchanges:
        if kind == pb.TASK_KIND_SECAGG_KEYS:
            adverts[index(result.province)] = result.arrays["keys"]
        elif kind == pb.TASK_KIND_TRAIN and result.province == VICTIM:
            masked, peers = result.arrays, told.parameters[secagg.SENDERS]
        elif kind == pb.TASK_KIND_SECAGG_UNMASK and "for" in result.arrays:
            dropped = "1" in str(told.config["secagg_dropped"]).split(",")
            shares = dict(zip(result.arrays["for"], result.arrays["shares"], strict=True))
            if 1 in shares:
                share = int.from_bytes(shares[1].tobytes())
                (keys if dropped else seeds)[index(result.province)] = share
    if masked is None or len(seeds) < threshold or (len(peers) and len(keys) < threshold):
        return None
    values = secagg.join_input(masked)
    encoding = secagg.Encoding(1e9, len(PROVINCES))
    seed = secagg.combine(dict(list(seeds.items())[:threshold]))
    values = values - secagg.prg(seed.to_bytes(32), len(values), encoding)
    if len(peers):
        key = secagg.combine(dict(list(keys.items())[:threshold]))
        private = X25519PrivateKey.from_private_bytes(key.to_bytes(32))
        for v in (int(v) for v in peers):
            agreed = secagg.agree(private, adverts[v][1].tobytes(), f"1-{v}".encode())
            values = values - secagg.prg(agreed, len(values), encoding)  # 1 < v: 1 added it
    return encoding.decode(values & encoding.mask)


def assert_not_recovered(server: DeviatingServer, threshold: int) -> None:
    recovered = recover_victim(server, threshold)
    if recovered is not None:  # what the attack gets where the clients do not refuse
        np.testing.assert_allclose(recovered, victims_input(), rtol=1e-9, atol=1e-4)
    assert recovered is None


# The statistics: the federation's sums only.

SIZE = len(preprocess.features_for(DATA["setting"])) + 1
SHAPES = {"count": (), "sum": (SIZE,), "cross": (SIZE, SIZE)}


def plausible(sums, count):
    """The server's checks of statistics, on the one sum it holds."""
    check_statistics(sums, count, [*preprocess.features_for(DATA["setting"]), preprocess.TARGET])


def own_statistics(province: str) -> dict[str, np.ndarray]:
    data = LocalWork(synthesize_province(province, ROWS, 0)).split(TaskGroups.parse(DATA))
    return preprocess.statistics(data.x_train, data.y_train)


def test_under_secagg_the_server_holds_only_the_sum_of_the_statistics(deviating):
    server = deviating()
    protocol = strategy()
    protocol.bind_phases(server.phase)
    results, parts = protocol.gather_statistics(
        sorted(PROVINCES), SHAPES, lambda result: None, plausible
    )
    truth = {p: own_statistics(p) for p in PROVINCES}
    assert len(results) == len(PROVINCES) and len(parts) == 1  # one sum, no province's own
    for name in SHAPES:
        expected = sum(t[name] for t in truth.values())
        np.testing.assert_allclose(parts[0][name], expected, rtol=1e-12, atol=1e-3)
    wide = secagg.WideEncoding(len(PROVINCES))
    uploads = [
        (r.province, r.arrays) for kind, _, r in server.exchanges if kind == pb.TASK_KIND_STATISTICS
    ]
    assert len(uploads) == len(PROVINCES)
    for province, arrays in uploads:
        cross = arrays["cross"]
        assert cross.dtype == np.int64 and cross.shape == (SIZE, SIZE, wide.limbs)
        own = truth[province]["cross"]
        ring = cross.view(np.uint64).ravel()
        assert not np.array_equal(ring, wide.encode(own.ravel()))  # not the plain encoding
        alone = wide.decode(ring).reshape(own.shape)  # all the server can read of one upload
        assert np.mean(np.isclose(alone, own, rtol=0.01)) < 0.05


# Attacks.


def empty_relay_for_the_victim(keep: int):
    """Client 1 receives the shares of only `keep` peers with its training task."""

    def tamper(kind, instruction: Instruction) -> Instruction:
        if kind != pb.TASK_KIND_TRAIN or instruction.province != VICTIM:
            return instruction
        arrays = dict(instruction.parameters)
        arrays[secagg.SENDERS] = arrays[secagg.SENDERS][:keep]
        arrays[secagg.SHARES] = arrays[secagg.SHARES][:keep]
        return replace(instruction, parameters=arrays)

    return tamper


@pytest.mark.parametrize("keep", [0, 3])
def test_a_client_given_a_short_relay_refuses_to_mask(deviating, keep):
    """The server hands client 1 the shares of fewer peers than the threshold needs (none, or
    three of the five), so that client 1 masks with its self mask and those few pairs only.
    Were its masked input sent, the self seed's shares would unmask it: client 1 refuses."""
    server = deviating(empty_relay_for_the_victim(keep))
    server.secagg_round(strategy())
    assert_not_recovered(server, threshold=7)
    assert "refusing to mask" in server.refusals.get(VICTIM, "")
    assert VICTIM not in {
        r.province for kind, _, r in server.exchanges if kind == pb.TASK_KIND_TRAIN
    }


GROUP_B = sorted(PROVINCES)[5:]  # clients 6..9


def split_survivors(relay_own_group: bool):
    """Clients 1..5 are told everyone survived (they would reveal client 1's self seed), 6..9
    that client 1 dropped (they would reveal its mask key). With `relay_own_group`, each group
    is shown only its own group's confirmations, which all agree within the group."""
    told = {}

    def tamper(kind, instruction: Instruction) -> Instruction:
        if kind != pb.TASK_KIND_SECAGG_UNMASK or instruction.province not in GROUP_B:
            if relay_own_group and instruction.config.get("secagg_step") == "reveal":
                return replace(instruction, parameters=only(instruction.parameters, False))
            return instruction
        survivors = [u for u in str(instruction.config["secagg_survivors"]).split(",") if u != "1"]
        config = {**instruction.config, "secagg_survivors": ",".join(survivors)}
        config["secagg_dropped"] = ",".join(filter(None, [str(config["secagg_dropped"]), "1"]))
        told[instruction.province] = config
        parameters = instruction.parameters
        if relay_own_group and config["secagg_step"] == "reveal":
            parameters = only(parameters, True)
        return replace(instruction, config=config, parameters=parameters)

    return tamper


def only(signatures, group_b: bool):
    """The relayed confirmations of group B only, or of the others only."""
    signed = secagg.unpack_signatures(signatures)
    wanted = {index(p) for p in GROUP_B}
    return secagg.pack_signatures({u: s for u, s in signed.items() if (u in wanted) == group_b})


@pytest.mark.parametrize(
    ("threshold", "relay_own_group", "refusal"),
    [(4, False, "unsafe"), (5, False, "refusing to reveal"), (5, True, "refusing to reveal")],
)
def test_different_survivor_lists_to_different_clients_are_refused(
    deviating, threshold, relay_own_group, refusal
):
    """Clients 1..5 would reveal client 1's self seed, 6..9 its mask key: with a threshold of
    four, enough of both. Clients refuse a threshold that is no majority; and each survivor signs
    the set it was told and checks, before revealing any share, that a majority of the round
    signed that same set, so the two lists cannot both pass."""
    server = deviating(split_survivors(relay_own_group))
    server.secagg_round(strategy(threshold=threshold))
    assert_not_recovered(server, threshold)
    refused = {p for p, why in server.refusals.items() if refusal in why}
    assert set(GROUP_B) <= refused


def named_both_survivor_and_dropped(kind, instruction: Instruction) -> Instruction:
    """The reveal step names client 1 a survivor, as every client confirmed, and dropped too:
    one answer would then carry both client 1's self seed share and its mask key share."""
    if kind != pb.TASK_KIND_SECAGG_UNMASK or instruction.config.get("secagg_step") != "reveal":
        return instruction
    dropped = ",".join(filter(None, [str(instruction.config["secagg_dropped"]), "1"]))
    return replace(instruction, config={**instruction.config, "secagg_dropped": dropped})


def test_a_request_for_both_shares_of_one_client_is_refused(deviating):
    """Every province is asked, in one reveal step, for both shares it holds of client 1:
    every one refuses, and the server never rebuilds client 1's input."""
    server = deviating(named_both_survivor_and_dropped)
    assert server.secagg_round(strategy()) is None
    assert_not_recovered(server, threshold=7)
    refused = {p for p, why in server.refusals.items() if "sets are unsafe" in why}
    assert refused == set(PROVINCES)
    assert not [r for kind, _, r in server.exchanges if "for" in r.arrays]


@pytest.mark.parametrize(
    ("steps", "refusal"),
    [(("reveal",), "not those this client confirmed"), (("confirm",), "second survivor set")],
)
def test_a_replayed_unmask_step_is_refused(deviating, steps, refusal):
    """After an honest round, which revealed client 1's self seed, the server asks the survivors
    again for the same round, now saying client 1 dropped, to be sent its mask key: by the
    reveal step alone, or first asking them to confirm the new survivor set."""
    server = deviating()
    assert server.secagg_round(strategy()) is not None
    replay = []
    for kind, told, _ in server.exchanges:
        if kind == pb.TASK_KIND_SECAGG_UNMASK and told.config.get("secagg_step") in steps:
            survivors = [u for u in str(told.config["secagg_survivors"]).split(",") if u != "1"]
            config = {**told.config, "secagg_survivors": ",".join(survivors), "secagg_dropped": "1"}
            replay.append(replace(told, config=config))
    server.phase(1, pb.TASK_KIND_SECAGG_UNMASK, replay, lambda result: result)
    assert_not_recovered(server, threshold=7)
    assert len(replay) == len(PROVINCES)
    assert all(refusal in server.refusals.get(i.province, "") for i in replay)


def test_the_same_inputs_are_unmasked_again_only_over_the_same_survivors(deviating):
    """Round 1 over all nine; asked again in a fresh session with the same nine, as a server
    resumed from its checkpoint asks, it is answered with the same sum; asked once more, the
    round renumbered 2 and the same model (so the same inputs), over the eight others, every
    one refuses to reveal: the difference of the two sums would be client 1's input."""
    server = deviating()
    first = server.secagg_round(strategy())
    assert first is not None
    resumed = server.secagg_round(strategy())
    assert resumed is not None
    for name in first:
        np.testing.assert_allclose(resumed[name], first[name], rtol=1e-9)
    others = [p for p in sorted(PROVINCES) if p != VICTIM]
    assert server.secagg_round(strategy(), others, server_round=2) is None
    refusal = "had unmasked before over"
    assert {p for p, why in server.refusals.items() if refusal in why} == set(others)
    # Shares were revealed in the two sessions over all nine, and in no other.
    sessions = [
        str(told.config["secagg_session"])
        for kind, told, _ in server.exchanges
        if kind == pb.TASK_KIND_SECAGG_UNMASK and told.config.get("secagg_step") == "reveal"
    ]
    assert len(sessions) == 2 * len(PROVINCES) and len(set(sessions)) == 2


# Threshold HE: one sum per round and phase of a run, so that no two can be differenced.

NEEDED = 5  # of the nine provinces' key shares


@pytest.fixture(scope="module")
def he_keys(tmp_path_factory):
    return write_keys(tmp_path_factory.mktemp("he"), bits=1024, needed=NEEDED)


def he_provinces(certificates, he_keys, records):
    """Each province's chain with its own key share and its record of decryptions on disk, as
    a province daemon keeps it (a new chain reads it as a restarted province would)."""

    def privacy(province: str) -> ClientPrivacy:
        share = read_share(he_keys[0][province], province, allow_small=True)
        record = DecryptionRecord(records / f"{province}.he-decryptions")
        return ClientPrivacy(share, Identity.load(certificates, province), record)

    return privacy


def he_strategy(he_keys) -> HEFedAvg:
    public = paillier.read_public_key(he_keys[1], allow_small=True)
    return HEFedAvg(FedAvg({"model": "lr"}, linear.check_weights), public)


def decrypted_sums(exchanges, public) -> list[dict[str, np.ndarray]]:
    """Every sum the server can decrypt from the partial decryptions it holds: one per HE
    session that at least the threshold of provinces answered."""
    by_session: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    for kind, told, result in exchanges:
        if kind == pb.TASK_KIND_HE_DECRYPT:
            answers = by_session.setdefault(str(told.config["he_session"]), {})
            answers[public.index(result.province)] = result.arrays
    sums = []
    for answers in by_session.values():
        if len(answers) < public.threshold:
            continue
        names = next(iter(answers.values()))
        sums.append(
            {
                name: paillier.decode(
                    threshold.combine(
                        public,
                        {i: paillier.from_tensor(a[name], public.n) for i, a in answers.items()},
                    ),
                    public.n,
                ).reshape(names[name].shape[:-1])
                for name in names
            }
        )
    return sums


def differenced(exchanges, public) -> dict[str, np.ndarray] | None:
    """The attack's goal: client 1's upload, as the sum over all nine minus a sum without it;
    None while the server holds fewer than two sums."""
    sums = decrypted_sums(exchanges, public)
    if len(sums) < 2:
        return None
    return {name: sums[0][name] - sums[1][name] for name in sums[0]}


def test_under_he_a_second_sum_of_the_statistics_without_one_province_is_refused(
    deviating, certificates, he_keys, tmp_path
):
    """The server gathers the statistics of all nine, restarts (and so do the provinces), then
    gathers them again without client 1: the second sum minus the first would be client 1's
    n, Σz and Σzzᵀ. Each province decrypts one sum of the statistics per run, and remembers it
    across its restart: all eight refuse."""
    privacy = he_provinces(certificates, he_keys, tmp_path)
    protocol = he_strategy(he_keys)
    first = deviating(privacy=privacy)
    protocol.bind_phases(first.phase)
    _, parts = protocol.gather_statistics(sorted(PROVINCES), SHAPES, lambda r: None, plausible)
    truth = {p: own_statistics(p) for p in PROVINCES}
    assert len(parts) == 1  # the honest phase: the federation's sums
    np.testing.assert_allclose(
        parts[0]["cross"], sum(t["cross"] for t in truth.values()), rtol=1e-9
    )
    first.close()
    again = deviating(privacy=privacy)  # nine new chains, reading their records from disk
    protocol.bind_phases(again.phase)
    others = [p for p in sorted(PROVINCES) if p != VICTIM]
    _, parts = protocol.gather_statistics(others, SHAPES, lambda r: None, plausible)
    assert parts == []
    assert {p for p, why in again.refusals.items() if "decrypt twice in round 0" in why} == set(
        others
    )
    recovered = differenced([*first.exchanges, *again.exchanges], protocol.public)
    if recovered is not None:  # what the attack gets where the provinces do not refuse
        np.testing.assert_allclose(recovered["cross"], truth[VICTIM]["cross"], rtol=1e-6)
    assert recovered is None


def test_under_he_a_repeated_round_without_one_province_is_refused(
    deviating, certificates, he_keys, tmp_path
):
    """Round 1 trained and decrypted over all nine, then round 1 again in a new session over
    the eight others: the difference would be client 1's weighted update. Refused by every
    province asked, and the honest round's sum is all the server holds."""
    server = deviating(privacy=he_provinces(certificates, he_keys, tmp_path))
    protocol = he_strategy(he_keys)
    assert server.secagg_round(protocol) is not None
    others = [p for p in sorted(PROVINCES) if p != VICTIM]
    assert server.secagg_round(protocol, others) is None
    assert {p for p, why in server.refusals.items() if "decrypt twice in round 1" in why} == set(
        others
    )
    assert len(decrypted_sums(server.exchanges, protocol.public)) == 1
    assert differenced(server.exchanges, protocol.public) is None
