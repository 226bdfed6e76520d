"""Threshold homomorphic encryption: any t provinces' shares decrypt a sum, fewer decrypt nothing,
and the server adds what it cannot read and holds the federation's sums only."""

import contextlib
import json

import numpy as np
import pytest

from baselines.data import DataOptions, prepare
from client.chain import DECRYPT, TRAIN, Outcome, Task
from client.chain import STATISTICS as STATISTICS_KIND
from client.groups import TaskGroups
from client.he import HEError
from client.he_keys import read_share, write_keys
from client.he_keys_cli import main as he_keys_main
from client.he_record import DecryptionRecord, RecordError
from client.local import LocalWork
from client.privacy import ClientPrivacy
from common import forecast, he_relay, paillier, preprocess, threshold
from common.data import synthesize_province
from common.keysign import Identity, KeyAuthenticationError
from common.launch import LocalFederation
from common.models import linear
from common.models.checks import UpdateError
from common.provinces import PROVINCES
from common.tensors import Payload
from common.wire import to_config
from proto.fedstock.v1 import federation_pb2 as pb
from server.__main__ import main as server_main
from server.certs import DEFAULT_SERVER_NAMES, write_federation
from server.channel import Assignment, gather
from server.checks import check_statistics
from server.memory import MemoryChannel
from server.privacy.he import HIDDEN, SCORES, HEFedAvg
from server.strategy import STATISTICS, ClientResult, FedAvg
from tests.in_memory import Scoring, run, scores_hidden

ROWS, SEED = 20_000, 3
FAST = ["--poll-seconds", "2", "--round-timeout", "600", "--join-timeout", "900"]
CONFIG = {"privacy": "he"}
DATA = {"setting": "next-day", "test_fraction": 0.2, "seed": SEED, "model": "lr"}
# The tests' 512-bit keys (a sixth of 1024-bit ones' cost; the sums fit them many times over)
# are below the minimum: every program must be told it is a test.
SMALL = paillier.INSECURE_KEY_FLAG
KEY_BITS = 512
NEEDED = 5  # of the nine provinces' shares


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return write_keys(tmp_path_factory.mktemp("he"), bits=KEY_BITS, needed=NEEDED)


def shares(keys) -> dict[str, threshold.Share]:
    return {p: read_share(path, p, allow_small=True) for p, path in keys[0].items()}


def public(keys) -> threshold.PublicKey:
    return paillier.read_public_key(keys[1], allow_small=True)


# The mathematics of threshold decryption.


def encrypted(key: threshold.PublicKey, values: list[int]) -> list[int]:
    return paillier.from_tensor(paillier.encrypt(np.array(values, float), key.n), key.n)


def test_any_threshold_of_shares_decrypts_and_fewer_do_not(keys):
    key, held = public(keys), shares(keys)
    values = [0, 1, -3, 12345]
    ciphertexts = encrypted(key, values)
    partials = {s.index: threshold.partial(s, ciphertexts) for s in held.values()}
    expected = paillier.encode(np.array(values, float), key.n)
    for chosen in ([1, 2, 3, 4, 5], [5, 6, 7, 8, 9], [1, 3, 5, 7, 9], list(range(1, 10))):
        assert threshold.combine(key, {i: partials[i] for i in chosen}) == expected
    fewer = {i: partials[i] for i in [2, 4, 6, 8]}
    with pytest.raises(threshold.ThresholdError, match="fewer than the 5 needed"):
        threshold.combine(key, fewer)
    # Combined as though four were enough, four shares do not give the plaintext.
    as_if = threshold.PublicKey(key.n, NEEDED - 1, key.members)
    with contextlib.suppress(threshold.ThresholdError):  # raised: not even of the form 1 + x·n
        assert threshold.combine(as_if, fewer) != expected


def test_a_wrong_partial_decryption_is_caught_when_more_than_the_threshold_answer(keys):
    key, held = public(keys), shares(keys)
    ciphertexts = encrypted(key, [7, 8])
    partials = {s.index: threshold.partial(s, ciphertexts) for s in held.values()}
    square = key.n**2
    for forged in (
        [c * (1 + 5 * key.n) % square for c in partials[3]],  # shifts the plaintext
        [pow(c, 3, square) for c in partials[3]],  # another exponent
    ):
        with pytest.raises(threshold.ThresholdError, match="wrong"):
            threshold.combine(key, {**partials, 3: forged})


def test_the_dealer_refuses_a_threshold_one_province_could_meet_alone(tmp_path, capsys):
    with pytest.raises(ValueError, match="between 2 and the 9"):
        threshold.PublicKey((1 << 2047) + 1, 1, PROVINCES)
    with pytest.raises(SystemExit):
        he_keys_main([str(tmp_path / "k"), "--threshold", "1"])
    assert "any one province decrypts alone" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


def test_each_key_file_holds_one_share_and_the_public_file_none(keys):
    paths, shared = keys
    assert set(json.loads(shared.read_text())) == {"n", "threshold", "members"}
    assert set(paths) == set(PROVINCES)
    for province, path in paths.items():
        assert (path.stat().st_mode & 0o077) == 0
        assert read_share(path, province, allow_small=True).index == public(keys).index(province)
    other = sorted(PROVINCES)[1]
    with pytest.raises(ValueError, match=f"not {other}'s"):
        read_share(paths[sorted(PROVINCES)[0]], other, allow_small=True)


def test_keys_below_2048_bits_are_refused_unless_explicitly_allowed(keys, tmp_path, capsys, caplog):
    paths, shared = keys
    province = PROVINCES[0]
    with pytest.raises(ValueError, match=f"{KEY_BITS}-bit modulus, below the 2048-bit minimum"):
        read_share(paths[province], province)
    with pytest.raises(ValueError, match=f"{KEY_BITS}-bit modulus, below the 2048-bit minimum"):
        paillier.read_public_key(shared)
    assert paillier.check_key_size(1 << 2047) == 1 << 2047
    with pytest.raises(SystemExit):
        he_keys_main([str(tmp_path / "small"), "--bits", "1024"])
    assert "--bits must be at least 2048" in capsys.readouterr().err
    assert not (tmp_path / "small").exists()
    flags = ["--insecure", "--privacy", "he", "--he-public-key", str(shared)]
    assert server_main([*flags, "--results", str(tmp_path / "r.json")]) == 2
    assert "below the 2048-bit minimum" in caplog.text


def test_a_key_from_before_threshold_decryption_is_refused_with_what_to_do(tmp_path):
    old = tmp_path / "he.key"
    old.write_text(json.dumps({"n": "ff", "p": "f", "q": "11"}))
    with pytest.raises(ValueError, match="deal shares with"):
        read_share(old, PROVINCES[0])
    (tmp_path / "he.pub").write_text(json.dumps({"n": "ff"}))
    with pytest.raises(ValueError, match="deal shares with"):
        paillier.read_public_key(tmp_path / "he.pub")


def test_a_client_without_its_share_says_what_to_do():
    task = Task(TRAIN, TaskGroups.parse(CONFIG), None)
    with pytest.raises(HEError, match="--he-key"):
        ClientPrivacy().run(task, lambda task: Outcome(1, {}, {"coef": np.zeros(2)}))


def test_fixed_point_encoding_round_trips_negatives_and_refuses_overflow():
    n = (1 << 127) - 1
    values = np.array([-3.25, 0.0, 1e6, -1e-9])
    np.testing.assert_allclose(paillier.decode(paillier.encode(values, n), n), values, atol=1e-9)
    with pytest.raises(ValueError, match="too large"):
        paillier.encode(np.array([1e40]), n)


# The server's side, in process over the in-memory channel: what it holds.


class Recording:
    """The strategy's phase runner over the in-memory channel, keeping every task and answer."""

    def __init__(self, keys) -> None:
        held = shares(keys)
        works = {
            p: LocalWork(synthesize_province(p, ROWS, SEED), ClientPrivacy(held[p]))
            for p in PROVINCES
        }
        self.channel = MemoryChannel(works)
        self.exchanges: list[tuple[int, dict, ClientResult]] = []

    def phase(self, server_round, kind, plan, accept):
        assignments = {}
        for instruction in plan:
            payload = Payload.encode(instruction.parameters) if instruction.parameters else None
            task = pb.Task(
                round=server_round,
                kind=kind,
                config=to_config({**DATA, **instruction.config}),
                parameters=payload.header if payload else None,
            )
            assignments[instruction.province] = Assignment(task, payload)
        sent = {i.province: i.parameters for i in plan}
        results, failures = gather(self.channel, server_round, kind, assignments, accept, 600)
        self.exchanges += [(kind, sent[r.province], r) for r in results]
        return results, failures


SIZE = len(preprocess.features_for(DATA["setting"])) + 1
SHAPES = {"count": (), "sum": (SIZE,), "cross": (SIZE, SIZE)}


def plausible(sums, count):
    check_statistics(sums, count, [*preprocess.features_for(DATA["setting"]), preprocess.TARGET])


def strategy(keys) -> HEFedAvg:
    return HEFedAvg(FedAvg({"model": "lr"}, linear.check_weights), public(keys))


def test_under_he_the_server_holds_only_the_sum_of_the_statistics(keys):
    server, protocol = Recording(keys), strategy(keys)
    protocol.bind_phases(server.phase)
    results, parts = protocol.gather_statistics(
        sorted(PROVINCES), SHAPES, lambda r: None, plausible
    )
    truth = {}
    for p in PROVINCES:
        data = LocalWork(synthesize_province(p, ROWS, SEED)).split(TaskGroups.parse(DATA))
        truth[p] = preprocess.statistics(data.x_train, data.y_train)
    assert len(results) == len(PROVINCES) and len(parts) == 1  # one sum, no province's own
    for name in SHAPES:
        expected = sum(t[name] for t in truth.values())
        np.testing.assert_allclose(parts[0][name], expected, rtol=1e-12, atol=1e-6)
    width = paillier.width(public(keys).n)
    uploads = {r.province: r.arrays for kind, _, r in server.exchanges if kind == STATISTICS}
    assert set(uploads) == set(PROVINCES)
    for arrays in uploads.values():  # ciphertexts only, of the right shapes
        assert arrays["cross"].dtype == np.uint8 and arrays["cross"].shape == (SIZE, SIZE, width)
    # All the provinces were asked to decrypt is the product of every upload, which each
    # province computes itself from the nine relayed uploads.
    asked = [sent for kind, sent, _ in server.exchanges if kind == pb.TASK_KIND_HE_DECRYPT]
    assert len(asked) == len(PROVINCES)
    for sent in asked:
        relayed = he_relay.unpack(sent)
        assert set(relayed) == set(PROVINCES)
        for province, upload in relayed.items():
            for name in SHAPES:
                np.testing.assert_array_equal(upload[name], uploads[province][name])


def test_the_server_sums_encrypted_updates_into_the_weighted_average(keys):
    server, protocol = Recording(keys), strategy(keys)
    protocol.bind_phases(server.phase)
    held = shares(keys)
    counts = dict(
        zip(sorted(PROVINCES), [786, 948, 3164, 500, 611, 700, 811, 922, 1033], strict=True)
    )

    def update(seed):
        rng = np.random.default_rng(seed)
        return {"coef": rng.normal(0, 50, size=8), "intercept": np.array(rng.normal(20, 1))}

    asked = {i.province: i.config for i in protocol.configure_fit(1, None, sorted(PROVINCES))}
    results = []
    for seed, (p, n) in enumerate(counts.items()):
        task = Task(TRAIN, TaskGroups.parse({**DATA, **asked[p]}), None)
        sealed = ClientPrivacy(held[p]).run(task, lambda t, s=seed, n=n: Outcome(n, {}, update(s)))
        protocol.check_update(sealed.arrays, 8)
        results.append(ClientResult(p, n, {}, sealed.arrays))
    merged = protocol.aggregate_fit(1, results, [], None)
    total = sum(counts.values())
    for name in ("coef", "intercept"):
        expected = sum(update(s)[name] * n for s, n in enumerate(counts.values())) / total
        np.testing.assert_allclose(merged[name], expected, rtol=0, atol=1e-8)
    # Fewer encrypted updates than the threshold: nothing is decrypted, the model stays.
    assert protocol.aggregate_fit(2, results[: NEEDED - 1], [], None) is None


def test_a_province_without_a_share_is_not_asked_to_upload(keys):
    plan = strategy(keys).configure_fit(1, None, [*sorted(PROVINCES), "xizang"])
    assert [i.province for i in plan] == sorted(PROVINCES)
    assert len({i.config["he_session"] for i in plan}) == 1  # one session for the phase


def test_the_server_refuses_plaintext_and_foreign_ciphertexts(keys):
    protocol = strategy(keys)
    with pytest.raises(UpdateError):
        protocol.check_update({"coef": np.zeros(8), "intercept": np.array(0.0)}, 8)
    n = public(keys).n
    sealed = {
        "coef": paillier.encrypt(np.zeros(8), n),
        "intercept": paillier.encrypt(np.array(0.0), n),
        paillier.WEIGHT: paillier.encrypt(np.array(1.0), n),
    }
    with pytest.raises(UpdateError, match="he_signature"):
        protocol.check_update(sealed, 8)
    sealed.update(he_relay.proofs(b"", b""))
    protocol.check_update(sealed, 8)
    sealed["coef"] = np.full_like(sealed["coef"], 255)  # above n²
    with pytest.raises(UpdateError):
        protocol.check_update(sealed, 8)
    # Scores in the clear, or encrypted without their proofs, are refused too.
    with pytest.raises(UpdateError, match="he_signature"):
        protocol.check_evaluation(ClientResult("hubei", 10, {"mse": 0.5}))
    scores = {name: paillier.encrypt(np.zeros(len(forecast.MEANS)), n) for name in SCORES}
    with pytest.raises(UpdateError, match="he_signature"):
        protocol.check_evaluation(ClientResult("hubei", 10, {}, scores))
    protocol.check_evaluation(
        ClientResult("hubei", 10, {}, {**scores, **he_relay.proofs(b"", b"")})
    )


def test_an_encrypted_run_in_memory_is_the_plain_run_and_no_provinces_score_leaves_it(
    tmp_path, keys
):
    quick = ["--model", "lr", "--rounds", "2", "--round-timeout", "30", "--join-timeout", "5"]
    plain = run(tmp_path / "plain", *quick)
    flags = ["--privacy", "he", "--he-public-key", str(keys[1]), SMALL]
    held = shares(keys)
    works = {
        p: Scoring(synthesize_province(p, ROWS, SEED), ClientPrivacy(held[p])) for p in PROVINCES
    }
    encrypted_run = run(tmp_path / "he", *quick, *flags, over=MemoryChannel(works))
    for name in ("mean", "std"):
        np.testing.assert_allclose(
            encrypted_run["statistics"][name], plain["statistics"][name], rtol=1e-9
        )
    assert np.isclose(encrypted_run["final"]["mse"], plain["final"]["mse"], rtol=1e-6)
    disclosure = encrypted_run["disclosure"]
    for phase in ("dates", "statistics", "updates", "metrics"):
        assert f"decrypted by {NEEDED} of the 9" in disclosure[phase]["server"]
    assert "no province's own score" in disclosure["metrics"]["server"]
    assert encrypted_run["split"] == plain["split"]  # one cutoff, from encrypted day counts
    # What each province sent the server of its scores: ciphertexts, its signature, its time.
    width = paillier.width(public(keys).n)
    for work in works.values():
        assert len(work.sent) == 2  # one evaluation a round
        for outcome in work.sent:
            assert set(outcome.metrics) == {"seconds"}
            assert set(outcome.arrays) == {forecast.SUMS, forecast.ROWS, *he_relay.PROOFS}
            for name in (forecast.SUMS, forecast.ROWS):
                assert outcome.arrays[name].shape == (len(forecast.MEANS), width)
    # The server decrypts the federation's scores, the same as in the clear, and no province's.
    scores_hidden(encrypted_run, plain, HIDDEN)


# A deviating server: what a province refuses to decrypt.

VICTIM = sorted(PROVINCES)[0]


@pytest.fixture(scope="module")
def signed(keys, tmp_path_factory):
    """Nine provinces' chains with their shares and certificates, and each one's signed
    encrypted statistics for one session, as the server holds them."""
    folder = tmp_path_factory.mktemp("certs")
    write_federation(folder, DEFAULT_SERVER_NAMES, PROVINCES)
    held = shares(keys)
    chains = {p: ClientPrivacy(held[p], Identity.load(folder, p)) for p in PROVINCES}
    config = {**DATA, **CONFIG, "he_session": "s1", "he_run": "r1", "round": 0}
    uploads = {
        p: chain.run(
            Task(STATISTICS_KIND, TaskGroups.parse(config), None),
            lambda task, i=i: Outcome(1, {}, {"sum": np.array([i, 1.0, -2.0])}),
        ).arrays
        for i, (p, chain) in enumerate(chains.items())
    }
    return chains, uploads, config


def decrypt(chain, config, relayed):
    task = Task(DECRYPT, TaskGroups.parse(config), relayed)
    return chain.run(task, lambda task: Outcome(1, {}, {})).arrays


def test_provinces_decrypt_the_sum_of_signed_uploads_once_per_session(keys, signed):
    chains, uploads, config = signed
    relayed = he_relay.pack(uploads)
    answers = {p: decrypt(chains[p], config, relayed) for p in sorted(PROVINCES)[:NEEDED]}
    key = public(keys)
    plain = threshold.combine(
        key,
        {key.index(p): paillier.from_tensor(a["sum"], key.n) for p, a in answers.items()},
    )
    expected = [sum(range(len(PROVINCES))), len(PROVINCES), -2.0 * len(PROVINCES)]
    np.testing.assert_allclose(paillier.decode(plain, key.n), expected)
    # The same session again, now without one province: refused, so no difference leaks.
    fewer = he_relay.pack({p: u for p, u in uploads.items() if p != sorted(PROVINCES)[-1]})
    with pytest.raises(HEError, match="decrypt twice"):
        decrypt(chains[VICTIM], config, fewer)


def test_a_province_refuses_to_decrypt_one_upload_or_forged_or_foreign_ones(keys, signed):
    chains, uploads, config = signed
    helper = chains[sorted(PROVINCES)[-1]]  # has not decrypted in these sessions
    alone = he_relay.pack({VICTIM: uploads[VICTIM]})
    with pytest.raises(HEError, match="fewer than the threshold"):
        decrypt(helper, {**config, "he_session": "alone"}, alone)
    # The victim's upload among encryptions of zero the server made: with proofs of its own,
    # or with the victim's signature and certificate copied.
    n = public(keys).n
    victims = {k: uploads[VICTIM][k] for k in he_relay.PROOFS}
    for proofs in (he_relay.proofs(b"x", b"y"), victims):
        forged = {
            p: {"sum": paillier.encrypt(np.zeros(3), n), **proofs}
            for p in sorted(PROVINCES)[1:NEEDED]
        }
        with pytest.raises(KeyAuthenticationError, match="refusing to decrypt"):
            decrypt(helper, config, he_relay.pack({VICTIM: uploads[VICTIM], **forged}))
    # Uploads signed for session s1, relayed in another session's decryption.
    with pytest.raises(KeyAuthenticationError, match="do not match their signature"):
        decrypt(helper, {**config, "he_session": "s2"}, he_relay.pack(uploads))


def test_a_province_decrypts_one_sum_per_round_and_phase_and_remembers_it(keys, signed, tmp_path):
    """Asked again for the same round's statistics, a province answers the same sum (as a
    server resuming after a lost answer would ask) and refuses any other, also after a
    restart, which reads its record from disk; a record it cannot read, or a run other than
    its record's, is refused."""
    _, uploads, config = signed
    held, folder = shares(keys), tmp_path / "receipts"
    record = folder / f"{VICTIM}.he-decryptions"
    relayed = he_relay.pack(uploads)

    def province() -> ClientPrivacy:  # started afresh: its record read from disk
        return ClientPrivacy(held[VICTIM], decryptions=DecryptionRecord(record))

    first = decrypt(province(), config, relayed)
    restarted = province()
    again = decrypt(restarted, config, relayed)
    assert again.keys() == first.keys()
    for name in first:
        np.testing.assert_array_equal(again[name], first[name])
    fewer = he_relay.pack({p: u for p, u in uploads.items() if p != sorted(PROVINCES)[-1]})
    with pytest.raises(HEError, match="decrypt twice in round 0"):
        decrypt(province(), config, fewer)
    # Another run: refused before its uploads are even summed.
    with pytest.raises(HEError, match="a new run needs a new record"):
        decrypt(restarted, {**config, "he_run": "r2"}, relayed)
    # A record cut short or edited: no decryption at all, rather than one from an empty record.
    text = record.read_text()
    for damaged in (text[: len(text) // 2], text.replace('"round": 0', '"round": "0"'), "{}\n"):
        record.write_text(damaged)
        with pytest.raises(RecordError, match=f"{record.name} line 1 is not a decryption"):
            DecryptionRecord(record)


def test_uploads_signed_for_another_run_or_round_are_not_decrypted(keys, signed):
    """The signature binds an upload to its run and round: relayed into another's sum, it
    fails the check; and statistics asked for outside round 0 are refused."""
    chains, uploads, config = signed
    helper = chains[sorted(PROVINCES)[-1]]
    relayed = he_relay.pack(uploads)
    for other in ({"he_run": "r0"}, {"round": 3}):
        with pytest.raises(KeyAuthenticationError, match="do not match their signature"):
            decrypt(helper, {**config, **other}, relayed)
    with pytest.raises(HEError, match="statistics outside round 0"):
        task = Task(STATISTICS_KIND, TaskGroups.parse({**config, "round": 2}), None)
        helper.run(task, lambda task: Outcome(1, {}, {"sum": np.zeros(3)}))


# Over real processes: nine client daemons, each with only its own share.


@pytest.mark.integration
def test_encrypted_federation_matches_plain_fedavg(tmp_path, keys):
    paths, shared = keys
    federation = LocalFederation(
        tmp_path,
        "lr",
        1,
        ROWS,
        SEED,
        server_args=[*FAST, "--privacy", "he", "--he-public-key", str(shared), SMALL],
    )
    federation.start_server()
    for province in PROVINCES:
        federation.start_client(province, "--he-key", str(paths[province]), SMALL)
    codes = federation.wait(timeout=240)
    assert codes == {name: 0 for name in ["server", *PROVINCES]}, codes
    results = federation.results()
    assert results["final"]["mse"] == pytest.approx(plain_fedavg_mse(), rel=1e-6)
    # The statistics the server derived are those of the nine provinces' rows together.
    frames = {p: synthesize_province(p, ROWS, SEED) for p in PROVINCES}
    splits = list(prepare(frames, DataOptions()).splits.values())  # at the union's cutoff
    rows = np.vstack([np.column_stack([s.x_train, s.y_train]) for s in splits])
    np.testing.assert_allclose(results["statistics"]["mean"], rows.mean(axis=0), rtol=1e-9)
    assert results["statistics"]["rows"] == len(rows)
    assert f"decrypted by {NEEDED} of the 9" in results["disclosure"]["statistics"]["server"]


def plain_fedavg_mse():
    """One round of plain FedAvg of the provinces' least-squares fits, computed in-process."""
    frames = {p: synthesize_province(p, ROWS, SEED) for p in PROVINCES}
    splits = list(prepare(frames, DataOptions()).splits.values())  # at the union's cutoff
    x = np.vstack([s.x_train for s in splits])
    mean, scale = x.mean(axis=0), x.std(axis=0)
    fits = [linear.fit_weights(preprocess.scale(s.x_train, mean, scale), s.y_train) for s in splits]
    counts = [len(s.y_train) for s in splits]
    model = {
        name: sum(f[name] * n for f, n in zip(fits, counts, strict=True)) / sum(counts)
        for name in ("coef", "intercept")
    }
    errors = [
        np.sum((linear.predict(model, preprocess.scale(s.x_test, mean, scale)) - s.y_test) ** 2)
        for s in splits
    ]
    return sum(errors) / sum(len(s.y_test) for s in splits)
