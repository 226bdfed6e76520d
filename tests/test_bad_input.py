"""Bad input over real localhost gRPC: every case gets a clear error, and the model stays clean."""

import contextlib
import socket
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest

from common.data.loaders import load_province
from common.data.synthetic import synthesize_province
from common.launch import LocalFederation
from common.preprocess import clean
from common.settings import DayCounts
from common.tensors import Payload
from common.tls import client_credentials
from common.wire import SESSION_METADATA_KEY, from_config
from proto.fedstock.v1 import federation_pb2 as pb
from proto.fedstock.v1 import federation_pb2_grpc as pb_grpc
from tests.hostile import no_dates, submission
from tests.test_federation import FAST, ROWS, SEED, centralised_fit

pytestmark = pytest.mark.integration

HONEST = ("hubei", "fujian", "sichuan", "shandong", "beijing", "zhejiang", "jiangsu", "guangdong")


class RogueClient(threading.Thread):
    """Joins as shanghai, then answers every task with something the server must refuse."""

    def __init__(self, address: str, credentials: grpc.ChannelCredentials) -> None:
        super().__init__(daemon=True)
        self.channel = grpc.secure_channel(address, credentials)
        self.stub = pb_grpc.FederationStub(self.channel)
        self.refusals: list[tuple[grpc.StatusCode, str]] = []
        self.error: BaseException | None = None
        self.joined = threading.Event()

    def run(self) -> None:
        try:
            self._misbehave()
        except BaseException as error:  # surfaced by the test, not lost in the thread
            self.error = error

    def _misbehave(self) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=600)
        session = self.stub.Join(pb.JoinRequest(province="shanghai", rows=100), timeout=10).session
        self.joined.set()
        metadata = ((SESSION_METADATA_KEY, session),)
        bad_updates = iter(
            [
                {
                    "count": np.array(1.0),
                    "sum": np.zeros(3),
                    "cross": np.zeros((9, 9)),
                },  # wrong shape
                {"xtx": np.full((9, 9), np.nan), "xty": np.zeros(9)},  # NaN
                {"xtx": np.zeros((9, 9), dtype=np.float32), "xty": np.zeros(9, dtype=np.float32)},
            ]
        )
        while True:
            chunks = list(self.stub.GetTask(pb.TaskRequest(), timeout=30, metadata=metadata))
            task = chunks[0].task
            if task.kind == pb.TASK_KIND_STOP:
                return
            if task.kind == pb.TASK_KIND_WAIT:
                continue
            if DayCounts.sent(from_config(task.config)) is not None:
                # The split's date questions: an answer of no rows, refused, so the cutoff is
                # the honest provinces' and the bad updates meet the phases they were made for.
                with contextlib.suppress(grpc.RpcError):
                    answer = submission(task, no_dates(task))
                    self.stub.Submit(answer, timeout=30, metadata=metadata)
                continue
            outcome = pb.Outcome(
                task_id=task.task_id, round=task.round, kind=task.kind, num_examples=10
            )
            if task.kind == pb.TASK_KIND_EVALUATE:
                # Refused at once, so no phase waits for its deadline however slow the machine.
                outcome.metrics["mse"] = -1.0
                messages = [pb.SubmitChunk(outcome=outcome)]
            else:
                payload = Payload.encode(next(bad_updates, {"wrong": np.zeros(1)}))
                outcome.parameters.CopyFrom(payload.header)
                messages = [pb.SubmitChunk(outcome=outcome)]
                messages += [pb.SubmitChunk(data=c) for c in payload.chunks()]
            try:
                self.stub.Submit(iter(messages), timeout=30, metadata=metadata)
            except grpc.RpcError as error:
                self.refusals.append((task.kind, error.code(), error.details()))


def test_hostile_updates_are_refused_and_the_global_model_stays_clean(tmp_path):
    federation = LocalFederation(
        tmp_path,
        "lr-exact",
        2,
        ROWS,
        SEED,
        provinces=HONEST,
        # No phase needs its deadline (the rogue's answers are refused at once): a generous one.
        server_args=[*FAST, "--round-timeout", "300", "--min-available", "9"],
    )
    federation.start_server()
    rogue = RogueClient(federation.address, client_credentials(federation.tls_dir, "shanghai"))
    rogue.start()
    assert rogue.joined.wait(timeout=600), rogue.error
    for province in HONEST:
        federation.start_client(province)
    codes = federation.wait(timeout=240)
    rogue.join(timeout=30)
    assert not rogue.is_alive() and rogue.error is None, rogue.error
    assert set(codes.values()) == {0}, codes
    updates = [(c, m) for kind, c, m in rogue.refusals if kind != pb.TASK_KIND_EVALUATE]
    assert [code for code, _ in updates] == [grpc.StatusCode.INVALID_ARGUMENT] * 3, updates
    messages = " | ".join(m for _, m in updates)
    assert "shape" in messages and "NaN" in messages and "dtype" in messages
    scores = [(c, m) for kind, c, m in rogue.refusals if kind == pb.TASK_KIND_EVALUATE]
    assert [code for code, _ in scores] == [grpc.StatusCode.INVALID_ARGUMENT] * 2, scores
    assert all("'mse'" in message for _, message in scores), scores
    results = federation.results()
    for record in results["rounds"]:
        assert record["clients"] == sorted(HONEST)
        assert {f["province"] for f in record["failures"]} == {"shanghai"}
    model = np.load(tmp_path / "model.npz")
    central = centralised_fit(provinces=HONEST)
    np.testing.assert_allclose(model["coef"], central.coef_, rtol=1e-6)


@pytest.fixture
def server(tmp_path):
    federation = LocalFederation(
        # Long polls: a client waiting for work stays polling while a test acts.
        tmp_path,
        "lr",
        1,
        server_args=[*FAST, "--reflection", "--poll-seconds", "20"],
        insecure=True,
    )
    federation.start_server()
    channel = grpc.insecure_channel(federation.address)
    grpc.channel_ready_future(channel).result(timeout=600)  # a loaded machine imports slowly
    yield federation, pb_grpc.FederationStub(channel)
    channel.close()
    federation.kill()


def join_twice_while_polling(stub) -> tuple[grpc.RpcError, tuple]:
    """hubei joins and waits for work; a second hubei then asks to join: its refusal, and the
    first's session. Nothing tells a client its poll has reached the server, so until the
    second join lands during the poll (it is then let in as a rejoin, and becomes the first),
    it tries again, waiting longer each time: the outcome never rests on one guess of timing."""
    reply = stub.Join(pb.JoinRequest(province="hubei", rows=5), timeout=60)
    for attempt in range(12):
        metadata = ((SESSION_METADATA_KEY, reply.session),)
        polling = threading.Thread(
            target=lambda m=metadata: list(stub.GetTask(pb.TaskRequest(), timeout=60, metadata=m)),
            daemon=True,
        )
        polling.start()
        polling.join(timeout=min(0.25 * 2**attempt, 10))  # within the 20 s poll
        try:
            reply = stub.Join(pb.JoinRequest(province="hubei", rows=5), timeout=60)
        except grpc.RpcError as refused:
            polling.join()
            return refused, metadata
        polling.join()
    raise AssertionError("a second hubei was never refused while the first was polling")


def test_protocol_abuse_gets_status_codes_a_person_can_act_on(server):
    _, stub = server
    with pytest.raises(grpc.RpcError) as unknown:
        stub.Join(pb.JoinRequest(province="atlantis"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hubei" in unknown.value.details()

    with pytest.raises(grpc.RpcError) as anonymous:
        list(stub.GetTask(pb.TaskRequest(), timeout=10))
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

    twice, metadata = join_twice_while_polling(stub)
    assert twice.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already connected" in twice.details()

    stale = pb.SubmitChunk(outcome=pb.Outcome(task_id="r0-train-hubei-0000", round=0))
    with pytest.raises(grpc.RpcError) as late:
        stub.Submit(iter([stale]), timeout=10, metadata=metadata)
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as headless:
        stub.Submit(iter([pb.SubmitChunk(data=b"x")]), timeout=10, metadata=metadata)
    assert headless.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_health_and_reflection_are_served(server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    federation, _ = server
    channel = grpc.insecure_channel(federation.address)
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    reply = next(
        reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([request]), timeout=10
        )
    )
    names = {s.name for s in reply.list_services_response.service}
    assert "fedstock.v1.Federation" in names and "grpc.health.v1.Health" in names


def run_cli(*args, timeout=180):  # a loaded machine takes long to import scikit-learn
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


def test_busy_port_is_a_clear_error(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run_cli(
            "-m",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--results",
            str(tmp_path / "r.json"),
            "--insecure",
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "client", "--province", "atlantis"], "unknown member 'atlantis'"),
        (["-m", "client"], "--province is required"),
        (["-m", "client", "--province", "hubei", "--rows", "many"], "invalid int value"),
        (["-m", "server", "--rounds", "0"], "--rounds must be at least 1"),
        (["-m", "server", "--model", "gpt"], "invalid choice"),
    ],
)
def test_wrong_flags_are_refused_with_a_reason(args, message):
    done = run_cli(*args)
    assert done.returncode == 2
    assert message in done.stderr


def test_missing_data_file_stops_the_client_with_a_clear_error(tmp_path):
    done = run_cli("-m", "client", "--province", "hubei", "--data", str(tmp_path))
    assert done.returncode == 2
    assert "hubei" in done.stderr and "Traceback" not in done.stderr


def hubei_file(folder, change) -> str:
    """hubei's synthetic rows, changed by `change`, as the province's Parquet file."""
    frame = change(synthesize_province("hubei", 3000, SEED))
    path = folder / "hubei.parquet"
    frame.to_parquet(path, index=False)
    return str(path)


def with_cell(column: str, value):
    """Data row 6's `column` set to `value`; text makes the column a text column, as a
    spreadsheet export writes it."""

    def change(frame):
        if isinstance(value, str):
            frame[column] = frame[column].astype(str)
        frame.loc[5, column] = value
        return frame

    return change


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda frame: frame.drop(columns="volume"), "missing column(s) volume"),
        (with_cell("close", "n/a"), "column 'close' needs numbers, found 'n/a' in data row 6"),
    ],
    ids=["missing column", "text in a number column"],
)
def test_a_malformed_data_file_stops_the_client_naming_file_column_and_value(
    tmp_path, change, says
):
    """It fails while loading, before it dials any server."""
    path = hubei_file(tmp_path, change)
    done = run_cli("-m", "client", "--province", "hubei", "--data", str(tmp_path), "--insecure")
    assert done.returncode == 2
    assert f"{path}: {says}" in done.stderr and "Traceback" not in done.stderr


def test_a_data_file_that_is_no_parquet_stops_the_client_naming_it(tmp_path):
    (tmp_path / "hubei.parquet").write_text("date,code,close\n")
    done = run_cli("-m", "client", "--province", "hubei", "--data", str(tmp_path), "--insecure")
    assert done.returncode == 2
    path = tmp_path / "hubei.parquet"
    assert f"{path}: not a readable Parquet file" in done.stderr and "Traceback" not in done.stderr


def test_a_row_with_an_infinite_number_is_loaded_then_dropped_by_cleaning(tmp_path):
    """Non-finite numbers are not bad input: `clean` drops their rows, as it drops suspended
    days, and keeps every other row."""
    hubei_file(tmp_path, with_cell("high", np.inf))
    raw = load_province(tmp_path, "hubei")
    assert np.isinf(raw.loc[5, "high"])
    whole = synthesize_province("hubei", 3000, SEED)
    assert len(clean(raw)) == len(clean(whole)) - 1
    assert not np.isinf(clean(raw)["high"]).any()


def test_when_the_federation_fails_its_clients_say_so(tmp_path):
    """Quorum never reached: the server exits 1, and so does every client it told to stop."""
    federation = LocalFederation(
        tmp_path,
        "lr",
        1,
        ROWS,
        SEED,
        provinces=("hubei", "fujian"),
        server_args=["--poll-seconds", "2", "--min-clients", "3", "--join-timeout", "15"],
    )
    federation.start()
    codes = federation.wait(timeout=120)
    assert codes == {"server": 1, "hubei": 1, "fujian": 1}, codes
    assert "only 2 of the 3 required clients" in (tmp_path / "server.log").read_text()
    assert "the federation failed" in (tmp_path / "hubei.log").read_text()
