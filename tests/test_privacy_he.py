"""Homomorphic encryption: Paillier sums equal plain sums; the server adds what it cannot read."""

import json

import numpy as np
import pytest

from client.chain import EVALUATE, TRAIN, Outcome, Task
from client.he_keys import main as he_keys_main
from client.he_keys import read_private_key, write_keys
from client.privacy import ClientPrivacy, PrivacyError
from common import paillier, preprocess
from common.data import synthesize_province
from common.launch import LocalFederation
from common.models import linear
from common.models.checks import UpdateError
from common.provinces import PROVINCES
from server.__main__ import main as server_main
from server.privacy.he import HEFedAvg
from server.strategy import ClientResult, FedAvg

ROWS, SEED = 20_000, 3
FAST = ["--poll-seconds", "2", "--round-timeout", "600", "--join-timeout", "900"]
CONFIG = {"privacy": "he"}
# The tests' 1024-bit keys are below the minimum: every program must be told it is a test.
SMALL = paillier.INSECURE_KEY_FLAG


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return write_keys(tmp_path_factory.mktemp("he"), bits=1024)


def update(seed):
    rng = np.random.default_rng(seed)
    return {"coef": rng.normal(0, 50, size=8), "intercept": np.array(rng.normal(20, 1))}


def seal(client, arrays, n):
    """`arrays` as they leave a province that trained on `n` rows: through its chain."""
    return client.run(Task(TRAIN, CONFIG, None), lambda task: Outcome(n, {}, arrays)).arrays


def reveal(client, parameters):
    """`parameters` as the province's work sees them, once the chain let them in."""
    task = Task(EVALUATE, CONFIG, parameters)
    return client.run(task, lambda inner: Outcome(1, {}, inner.parameters)).arrays


def test_the_server_sums_ciphertexts_into_the_weighted_average(keys):
    secret, shared = keys
    client = ClientPrivacy(read_private_key(secret, allow_small=True))
    server = HEFedAvg(
        FedAvg({"model": "lr"}, linear.check_weights),
        paillier.read_public_key(shared, allow_small=True),
    )
    counts = [786, 948, 3164]
    results = []
    for seed, n in enumerate(counts):
        sealed = seal(client, update(seed), n)
        server.check_update(sealed, 8)
        results.append(ClientResult(f"p{seed}", n, {}, sealed))
    merged = reveal(client, server.aggregate_fit(1, results, [], None))
    expected = {
        name: sum(update(s)[name] * n for s, n in enumerate(counts)) / sum(counts)
        for name in ("coef", "intercept")
    }
    for name, value in expected.items():
        np.testing.assert_allclose(merged[name], value, rtol=0, atol=2.0**-paillier.FRACTION_BITS)


def test_ciphertexts_are_not_the_plaintext_and_differ_each_time(keys):
    client = ClientPrivacy(read_private_key(keys[0], allow_small=True))
    plain = update(0)
    first, second = seal(client, plain, 1), seal(client, plain, 1)
    assert first["coef"].dtype == np.uint8 and first["coef"].shape[:-1] == (8,)
    assert not np.array_equal(first["coef"], second["coef"])
    encoded = paillier.encode(plain["coef"], paillier.read_public_key(keys[1], allow_small=True))
    assert not set(encoded) & set(
        paillier.from_tensor(
            first["coef"], read_private_key(keys[0], allow_small=True).public_key.n
        )
    )


def test_the_public_key_file_holds_no_secret(keys):
    secret, shared = keys
    assert set(json.loads(shared.read_text())) == {"n"}
    assert (secret.stat().st_mode & 0o077) == 0


def test_the_server_refuses_plaintext_and_foreign_ciphertexts(keys):
    n = paillier.read_public_key(keys[1], allow_small=True)
    server = HEFedAvg(FedAvg({"model": "lr"}, linear.check_weights), n)
    with pytest.raises(UpdateError):
        server.check_update(update(0), 8)
    sealed = seal(ClientPrivacy(read_private_key(keys[0], allow_small=True)), update(0), 5)
    sealed["coef"] = np.full_like(sealed["coef"], 255)  # above n²
    with pytest.raises(UpdateError):
        server.check_update(sealed, 8)


def test_a_client_without_the_key_says_what_to_do():
    with pytest.raises(PrivacyError, match="--he-key"):
        seal(ClientPrivacy(), update(0), 1)


def test_fixed_point_encoding_round_trips_negatives_and_refuses_overflow():
    n = (1 << 127) - 1
    values = np.array([-3.25, 0.0, 1e6, -1e-9])
    np.testing.assert_allclose(paillier.decode(paillier.encode(values, n), n), values, atol=1e-9)
    with pytest.raises(ValueError, match="too large"):
        paillier.encode(np.array([1e40]), n)


@pytest.mark.integration
def test_encrypted_federation_matches_plain_fedavg(tmp_path, keys):
    secret, shared = keys
    federation = LocalFederation(
        tmp_path,
        "lr",
        1,
        ROWS,
        SEED,
        server_args=[*FAST, "--privacy", "he", "--he-public-key", str(shared), SMALL],
        client_args=["--he-key", str(secret), SMALL],
    )
    federation.start()
    codes = federation.wait(timeout=240)
    assert codes == {name: 0 for name in ["server", *PROVINCES]}, codes
    results = federation.results()
    model = np.load(tmp_path / results["final"]["model_file"])
    assert model["coef"].dtype == np.uint8  # the server only ever held ciphertexts
    assert results["final"]["mse"] == pytest.approx(plain_fedavg_mse(), rel=1e-6)


def plain_fedavg_mse():
    """One round of plain FedAvg of the provinces' least-squares fits, computed in-process."""
    splits = [preprocess.split(synthesize_province(p, ROWS, SEED), "next-day") for p in PROVINCES]
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


def test_keys_below_2048_bits_are_refused_unless_explicitly_allowed(keys, tmp_path, capsys, caplog):
    secret, shared = keys
    for read, path in ((read_private_key, secret), (paillier.read_public_key, shared)):
        with pytest.raises(ValueError, match="1024-bit modulus, below the 2048-bit minimum"):
            read(path)
    assert paillier.check_key_size(1 << 2047) == 1 << 2047
    with pytest.raises(SystemExit):
        he_keys_main([str(tmp_path / "small"), "--bits", "1024"])
    assert "--bits must be at least 2048" in capsys.readouterr().err
    assert not (tmp_path / "small").exists()
    flags = ["--insecure", "--privacy", "he", "--he-public-key", str(shared)]
    assert server_main([*flags, "--results", str(tmp_path / "r.json")]) == 2
    assert "below the 2048-bit minimum" in caplog.text
