import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from client.receipts import Receipt, ReceiptBook, ReceiptError
from common.provinces import PROVINCES
from common.tensors import Payload
from server.certs import DEFAULT_SERVER_NAMES, write_federation
from server.checkpoint import Checkpoint
from server.ledger import Ledger, LedgerError, Signer, entry_hash, read_verified, receipt
from server.localrun import LocalFederation


def model(r):
    return {"coef": np.arange(3.0) * r, "intercept": np.array([float(r)])}


def record(r):
    return {
        "round": r,
        "model_digest": Payload.encode(model(r)).digest(),
        "participants": ["hubei"],
        "metrics": {"mse": 1.0 / r},
    }


def write_ledger(path, rounds=4, signer=None):
    """A ledger of `rounds` entries, and the receipts a province would hold of them."""
    ledger = Ledger(path, signer or Signer.ephemeral())
    book = ReceiptBook(path.parent / "receipts" / "hubei.jsonl")
    ledger.subscribe(lambda r: book.record([r]))
    for r in range(1, rounds + 1):
        ledger.append(record(r))
    return ledger


def verify(path, *extra):
    return subprocess.run(
        [sys.executable, "-m", "server.ledger", "verify", str(path), *extra],
        capture_output=True,
        text=True,
    )


def lines_of(path):
    return path.read_text().splitlines(keepends=True)


def rewrite(path, entries, signer):
    """Re-chain and re-sign `entries` as a server holding `signer`'s key could."""
    path.unlink()
    forged = Ledger(path, signer)
    for entry in entries:
        forged.append({k: v for k, v in entry.items() if k not in Ledger.CHAIN_FIELDS})
    return forged


@pytest.fixture(scope="module")
def federation_certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    write_federation(folder, DEFAULT_SERVER_NAMES, ("hubei",))
    return folder


def test_an_intact_ledger_verifies_and_continues_its_chain(tmp_path):
    path = tmp_path / "ledger.jsonl"
    signer = Signer.ephemeral()
    write_ledger(path, 2, signer)
    again = Ledger(path, signer)
    again.append({"round": 3})
    assert [e["round"] for e in read_verified(path)] == [1, 2, 3]
    done = verify(path, "--head", again.head, "--receipts", str(tmp_path / "receipts"))
    assert done.returncode == 0, done.stderr
    assert "intact, 3 entries" in done.stdout and "2 receipts agree" in done.stdout
    assert "signer not checked (no --ca)" in done.stdout


def test_entries_are_signed_by_the_server_certificate_under_tls(tmp_path, federation_certs):
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, 2, Signer.load(federation_certs))
    entry = read_verified(path)[0]
    assert entry["certificate"] == (federation_certs / "server.pem").read_text()
    done = verify(path, "--ca", str(federation_certs / "ca.pem"))
    assert done.returncode == 0 and "signer issued by the given CA" in done.stdout


def nan_metric(lines):
    return [lines[0], lines[1].replace('"mse": 0.5', '"mse": NaN'), *lines[2:]]


def without(field):
    def strip(lines):
        entry = json.loads(lines[1])
        del entry[field]
        return [lines[0], json.dumps(entry) + "\n", *lines[2:]]

    return strip


@pytest.mark.parametrize(
    ("tamper", "named", "why"),
    [
        (lambda ls: [ls[0], ls[1].replace('"mse": 0.5', '"mse": 0.4'), *ls[2:]], "entry 2", ""),
        (lambda ls: [ls[0], *ls[2:]], "entry 2", "out of order"),
        (lambda ls: [ls[0], ls[2], ls[1], ls[3]], "entry 2", "out of order"),
        (lambda ls: [*ls[:3], "not json\n"], "entry 4", "malformed"),
        (lambda ls: [*ls[:3], "[1, 2]\n"], "entry 4", "not a JSON object"),
        (nan_metric, "entry 2", "NaN"),
        (without("signature"), "entry 2", "unsigned"),
        (without("round"), "entry 2", "round None"),
    ],
    ids=["edit", "delete", "reorder", "garbage", "array", "nan", "unsigned", "no-round"],
)
def test_every_tampering_is_caught_at_the_first_bad_entry(tmp_path, tamper, named, why):
    path = tmp_path / "ledger.jsonl"
    write_ledger(path)
    path.write_text("".join(tamper(lines_of(path))))
    with pytest.raises(LedgerError, match=named):
        read_verified(path)
    done = verify(path)
    assert done.returncode == 1 and f"BROKEN: {named}" in done.stderr and why in done.stderr
    assert "Traceback" not in done.stderr


def test_an_edit_that_recomputes_its_hash_does_not_match_its_signature(tmp_path):
    path = tmp_path / "ledger.jsonl"
    write_ledger(path)
    lines = lines_of(path)
    entry = json.loads(lines[1])
    entry["metrics"]["mse"] = 0.0
    entry["hash"] = entry_hash(entry)
    lines[1] = json.dumps(entry) + "\n"
    path.write_text("".join(lines))
    done = verify(path)
    assert done.returncode == 1
    assert "entry 2 (line 2) has a signature that does not match its content" in done.stderr


def test_a_ledger_rechained_with_the_leaked_server_key_is_caught_by_a_receipts_file(
    tmp_path, federation_certs
):
    path = tmp_path / "ledger.jsonl"
    signer = Signer.load(federation_certs)
    entries = write_ledger(path, 4, signer).entries()
    entries[1]["metrics"]["mse"] = 0.0
    forged = rewrite(path, entries, signer)
    ca = str(federation_certs / "ca.pem")
    # Signatures, chain and head all check out: only what the provinces hold tells.
    assert verify(path, "--ca", ca, "--head", forged.head).returncode == 0
    done = verify(path, "--ca", ca, "--receipts", str(tmp_path / "receipts"))
    assert done.returncode == 1
    assert "entry 2 (line 2) disagrees with the receipt in hubei.jsonl" in done.stderr


def test_a_ledger_rechained_with_another_key_is_caught_by_the_ca(tmp_path, federation_certs):
    path = tmp_path / "ledger.jsonl"
    entries = write_ledger(path, 3, Signer.load(federation_certs)).entries()
    rewrite(path, entries, Signer.ephemeral())
    done = verify(path, "--ca", str(federation_certs / "ca.pem"))
    assert done.returncode == 1
    assert "entry 1 (line 1) is signed by a certificate the given CA did not issue" in done.stderr


def test_a_province_certificate_cannot_sign_the_ledger(tmp_path, federation_certs):
    path = tmp_path / "ledger.jsonl"
    folder = tmp_path / "as-server"
    folder.mkdir()
    shutil.copy(federation_certs / "hubei.key", folder / "server.key")
    shutil.copy(federation_certs / "hubei.pem", folder / "server.pem")
    write_ledger(path, 1, Signer.load(folder))
    done = verify(path, "--ca", str(federation_certs / "ca.pem"))
    assert done.returncode == 1 and "issued to a client, not the server" in done.stderr


def test_entries_cut_off_the_end_are_caught_by_the_head_and_by_receipts(tmp_path):
    path = tmp_path / "ledger.jsonl"
    head = write_ledger(path).head
    path.write_text("".join(lines_of(path)[:-1]))
    assert verify(path).returncode == 0
    done = verify(path, "--head", head)
    assert done.returncode == 1 and "removed from the end" in done.stderr
    done = verify(path, "--receipts", str(tmp_path / "receipts"))
    assert done.returncode == 1
    assert "entry 4 is missing: hubei.jsonl holds its receipt" in done.stderr


def test_an_unsigned_ledger_from_before_is_refused_clearly(tmp_path):
    path = tmp_path / "ledger.jsonl"
    old = {"round": 1, "index": 1, "previous": "0" * 64, "model_digest": None}
    old["hash"] = entry_hash(old)
    path.write_text(json.dumps(old) + "\n")
    with pytest.raises(LedgerError, match=r"entry 1 .* is unsigned"):
        Ledger(path, Signer.ephemeral())
    done = verify(path)
    assert done.returncode == 1 and "written before entries were signed" in done.stderr


def test_the_model_file_must_be_the_last_entrys_model(tmp_path):
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, 3)
    np.savez(tmp_path / "model.npz", **model(3))
    done = verify(path)
    assert done.returncode == 0 and "model.npz is the last entry's model" in done.stdout
    np.savez(tmp_path / "model.npz", **model(2))
    done = verify(path)
    assert done.returncode == 1 and "model.npz is not the model the last entry" in done.stderr
    (tmp_path / "model.npz").write_text("not a zip")
    done = verify(path)
    assert done.returncode == 1 and "cannot be read as a model file" in done.stderr


def test_a_receipt_that_contradicts_one_already_held_is_refused(tmp_path):
    book = ReceiptBook(tmp_path / "hubei.jsonl")
    first = Receipt(1, "a" * 64, "c2ln")
    assert book.record([first, first]) == [first]
    assert book.record([first]) == []
    with pytest.raises(ReceiptError, match=r"entry 1 has hash b{64}.*rewrote its ledger"):
        ReceiptBook(tmp_path / "hubei.jsonl").record([Receipt(1, "b" * 64, "c2ln")])
    assert ReceiptBook(tmp_path / "hubei.jsonl").held == {1: first}


def test_checked_receipts_are_written_only_when_kept(tmp_path):
    path = tmp_path / "hubei.jsonl"
    book = ReceiptBook(path)
    first = Receipt(1, "a" * 64, "c2ln")
    assert book.check([first]) == [first]
    assert not path.exists() and book.held == {}
    book.keep([first])
    assert ReceiptBook(path).held == {1: first}
    assert book.check([first]) == []
    with pytest.raises(ReceiptError, match="rewrote its ledger"):
        book.check([Receipt(1, "b" * 64, "c2ln")])


def test_malformed_receipts_cannot_check_anything(tmp_path):
    path = tmp_path / "ledger.jsonl"
    write_ledger(path, 1)
    (tmp_path / "receipts" / "hubei.jsonl").write_text('{"index": 0, "hash": "x"}\n')
    done = verify(path, "--receipts", str(tmp_path / "receipts"))
    assert done.returncode == 2 and "line 1 is not a receipt" in done.stderr
    assert verify(path, "--receipts", str(tmp_path / "none")).returncode == 2


def test_receipts_are_what_the_entries_say(tmp_path):
    entry = write_ledger(tmp_path / "ledger.jsonl", 1).entries()[0]
    assert receipt(entry) == Receipt(1, entry["hash"], entry["signature"])


@pytest.mark.integration
@pytest.mark.parametrize("insecure", [False, True], ids=["mtls", "insecure"])
def test_every_province_keeps_receipts_that_hold_the_server_to_its_ledger(tmp_path, insecure):
    """Real processes: each province's receipts cover every entry, and any one province's file
    catches a ledger the server rewrote with its own key. Under mutual TLS the server's
    certificate signs; with --insecure a key the run made does, which no CA vouches for, and
    the receipts hold the server to its ledger all the same."""
    provinces = PROVINCES[:3]
    federation = LocalFederation(
        tmp_path,
        "lr",
        3,
        20_000,
        3,
        provinces=provinces,
        server_args=["--poll-seconds", "2", "--round-timeout", "60", "--join-timeout", "120"],
        insecure=insecure,
    )
    federation.start()
    codes = federation.wait(timeout=240)
    assert codes == {name: 0 for name in ["server", *provinces]}, codes
    ledger, receipts = tmp_path / "ledger.jsonl", tmp_path / "receipts"
    ca = [] if insecure else ["--ca", str(federation.tls_dir / "ca.pem")]
    head = federation.results()["final"]["ledger_head"]
    done = verify(ledger, "--head", head, *ca, "--receipts", str(receipts))
    assert done.returncode == 0, done.stderr
    assert "9 receipts agree" in done.stdout and "model.npz is the last entry's" in done.stdout
    assert ("signer not checked (no --ca)" in done.stdout) == insecure
    entries = read_verified(ledger)
    for province in provinces:
        held = ReceiptBook(receipts / f"{province}.jsonl").held
        assert held == {e["index"]: receipt(e) for e in entries}
    entries[0]["metrics"]["mse"] /= 2
    rewrite(ledger, entries, Signer.ephemeral() if insecure else Signer.load(federation.tls_dir))
    one = tmp_path / "one-province"
    one.mkdir()
    shutil.copy(receipts / f"{provinces[1]}.jsonl", one)
    done = verify(ledger, *ca, "--receipts", str(one))
    assert done.returncode == 1 and "entry 1 (line 1) disagrees with the receipt" in done.stderr


def test_checkpoint_roundtrip_keeps_arrays_and_state(tmp_path):
    path = tmp_path / "checkpoint.npz"
    saved = Checkpoint(
        3,
        {"coef": np.arange(3.0), "tree.0/feature": np.arange(2)},
        np.zeros(2),
        np.ones(2),
        {"a": [1, 2]},
    )
    saved.save(path)
    loaded = Checkpoint.load(path)
    assert loaded.server_round == 3 and loaded.state == {"a": [1, 2]}
    np.testing.assert_array_equal(loaded.parameters["coef"], np.arange(3.0))
    np.testing.assert_array_equal(loaded.parameters["tree.0/feature"], np.arange(2))
    assert list(tmp_path.iterdir()) == [path]
