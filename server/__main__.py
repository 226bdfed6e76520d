"""`python -m server`: the aggregation daemon; every flag has an environment fallback."""

from __future__ import annotations

import hashlib
import logging
import math
import sys
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common import quantity
from common.allocator import give_back_large_buffers
from common.logs import setup_logging
from common.tls import server_credentials
from common.wire import (
    DEFAULT_RECEIVE_WINDOW_KB,
    SERVER_OPTIONS,
    SOFTWARE_VERSION,
    ConfigScalar,
    server_options,
)
from server import analysis, asynchronous, privacy, strategies
from server.admission import Admission
from server.channel import TaskChannel
from server.cli import parse_args
from server.config import ServerConfig
from server.coordinator import Coordinator
from server.ledger import Ledger, LedgerError, Signer
from server.lifecycle import run_to_end
from server.limits import SIDE_CALLS, Activity, CallLimits
from server.livestate import LiveState, RunInfo
from server.liveview import LiveView
from server.model_selection import ModelSelection
from server.models import build_strategy
from server.privacy.dp import planned_releases
from server.recorder import Resumed, ResumeError, read_checkpoint
from server.results import ResultsFile
from server.robust_sums import robust_sums
from server.rounds import RoundLoop
from server.schedule import Cohort
from server.servicer import SERVICE as FEDERATION
from server.servicer import FederationServicer, add_to_server
from server.strategy import Strategy

log = logging.getLogger("fedstock.server")


def build_server(
    coordinator: Coordinator,
    address: str,
    workers: int,
    max_update_bytes: int,
    credentials: grpc.ServerCredentials | None = None,
    admission: Admission | None = None,
    reflection_on: bool = False,
    idle_seconds: float = 60.0,
    receive_window_kb: int = DEFAULT_RECEIVE_WINDOW_KB,
) -> tuple[grpc.Server, health.HealthServicer]:
    """The gRPC server with the Federation and health services (and reflection if asked for),
    bound to `address`.

    With `credentials` (mutual TLS) every Federation call must carry a province certificate.
    Uploads are admitted by `admission` (by default as many bytes as one largest update).
    Every call is cancelled after `idle_seconds` waiting on its peer, and health and reflection
    streams hold at most SIDE_CALLS threads, which the pool has beside the `workers` threads of
    the federation, so no stranger can hold a thread the federation needs. Each stream may
    send `receive_window_kb` KiB ahead of what the server has read (0: as gRPC's probe sizes it).
    """
    activity = Activity(idle_seconds)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers + SIDE_CALLS),
        options=server_options(receive_window_kb),
        interceptors=[CallLimits(activity, SIDE_CALLS)],
    )
    add_to_server(
        FederationServicer(
            coordinator,
            max_update_bytes,
            mutual_tls=credentials is not None,
            admission=admission,
            # A working client's heartbeats keep its session stream well inside the idle timeout;
            # a session stream silent for all of it is a hung client, whose task fails then.
            activity=activity,
        ),
        server,
    )
    health_servicer = health.HealthServicer()
    _side_services(server, health_servicer, reflection_on, FEDERATION)
    _listen(server, address, credentials)
    for name in ("", FEDERATION):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer


def build_health_server(
    address: str, health_servicer: health.HealthServicer, reflection_on: bool, idle_seconds: float
) -> grpc.Server:
    """A plaintext server of health (and reflection if asked for) alone, for local probes of a
    mutual-TLS server: its own few threads and limits, nothing shared with the federation's."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=SIDE_CALLS + 2),  # two for quick health Checks
        options=SERVER_OPTIONS,
        interceptors=[CallLimits(Activity(idle_seconds), SIDE_CALLS)],
    )
    _side_services(server, health_servicer, reflection_on)
    _listen(server, address, None)
    return server


def _side_services(
    server: grpc.Server, servicer: health.HealthServicer, reflection_on: bool, *names: str
) -> None:
    """Health, and reflection of `names`, health and itself if asked for."""
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if reflection_on:
        reflection.enable_server_reflection(
            (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )


def _listen(server: grpc.Server, address: str, credentials: grpc.ServerCredentials | None) -> None:
    try:
        if credentials is None:
            server.add_insecure_port(address)
        else:
            server.add_secure_port(address, credentials)
    except RuntimeError as error:
        raise OSError(
            f"cannot listen on {address}: is the port already in use? ({error})"
        ) from None


def open_ledger(path: Path, resuming: bool, signer: Signer) -> Ledger:
    """The run's ledger; a fresh run keeps an earlier run's ledger aside, under a digest of its
    bytes (unread: an old or broken ledger is kept, not judged)."""
    if path.exists() and not resuming:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        kept = path.with_name(f"{path.stem}-{digest[:12]}{path.suffix}")
        path.replace(kept)
        log.info("an earlier run's ledger is kept as %s", kept)
    try:
        return Ledger(path, signer)
    except LedgerError as error:
        raise LedgerError(
            f"{path}: {error}; the run cannot go on with it: move it aside to resume from the "
            "checkpoint with a new ledger, or start afresh in another --results folder"
        ) from None


def strategy_builder(config: ServerConfig) -> Callable[[Mapping[str, ConfigScalar]], Strategy]:
    """Builds the strategy asked for from model options (model selection varies them)."""

    selection = config.model
    candidates = math.prod(len(values) for values in selection.grid.values())
    releases = planned_releases(
        config.run.rounds,
        selection.cv_folds,
        candidates,
        time_split=config.run.setting == "next-day",
    )
    # One accountant for every strategy built: cross-validation's releases count too.
    accountant = privacy.dp_accountant(config.privacy, releases, config.dp_ranges())

    def build(params: Mapping[str, ConfigScalar]) -> Strategy:
        model = build_strategy(config.model.model, params)
        if config.strategy.robust_sums:
            model = robust_sums(model)
        return strategies.wrap(
            privacy.wrap(model, config.privacy, config.run.rounds, accountant), config.strategy
        )

    return build


def check_plan(config: ServerConfig) -> None:
    """ValueError if the strategy or the analysis asked for cannot be built."""
    strategy = strategy_builder(config)(config.model.options)
    wanted = analysis.AnalysisSettings.asked(config.analysis, config.run.seed)
    if wanted is not None:
        analysis.check_supported(wanted, strategy)


def results_file(config: ServerConfig) -> ResultsFile:
    return ResultsFile(
        config.results,
        {
            "model": config.model.model,
            "setting": config.run.setting,
            "features": config.run.features,
            "forecast": quantity.record(config.run.forecast),
            "server_version": SOFTWARE_VERSION,
            "config": config.record(),
        },
    )


def run_signer(config: ServerConfig) -> Signer:
    """The key that signs the ledger: the server's TLS identity, or one this run creates."""
    serve = config.serve
    return Signer.ephemeral() if serve.insecure else Signer.load(serve.tls_dir)


@dataclass(frozen=True)
class Start:
    """What a run goes ahead with: its ledger, and the checkpoint it resumes from (if any)."""

    ledger: Ledger
    resumed: Resumed | None


def begin(config: ServerConfig, signer: Signer | None = None) -> Start:
    """Read and check everything a restart resumes from before anything is written, so a
    refused resume (ResumeError, LedgerError, or ValueError for another strategy's state)
    leaves the earlier run's results, checkpoint and ledger as they were."""
    resumed = read_checkpoint(
        config.results.with_name("checkpoint.npz"),
        config.model.model,
        config.run.setting,
        config.run.forecast,
    )
    if resumed is not None:
        strategy_builder(config)(config.model.options).restore(resumed.strategy_state)
    ledger = open_ledger(
        config.results.with_name("ledger.jsonl"),
        resumed is not None,
        signer or run_signer(config),
    )
    return Start(ledger, resumed)


def federate(
    config: ServerConfig, channel: TaskChannel, results: ResultsFile, start: Start
) -> None:
    """The run `config` describes, over any task channel: statistics, rounds, analysis."""
    options = config.model.options
    build = strategy_builder(config)
    start.ledger.subscribe(channel.publish_receipt)
    model = config.model
    selection = ModelSelection(build, options, model.grid, model.cv_folds, model.cv_embargo)
    wanted = analysis.AnalysisSettings.asked(config.analysis, config.run.seed)
    after = analysis.Analysis(wanted) if wanted else None
    strategy = build(options)
    schedule = asynchronous.Buffered(config.buffering) if config.mode == "async" else Cohort()
    loop = RoundLoop(
        channel,
        strategy,
        config.run,
        results,
        start.ledger,
        config.results.with_name("checkpoint.npz"),
        after,
        schedule,
        start.resumed,
    )
    loop.run(selection.choose if config.model.cv_folds else None)


def tls_hint(insecure: bool) -> str:
    """What a waiting server says a client must do to get in: the two sides' TLS must match,
    and a mismatch fails in the handshake, before any call this server could log."""
    if insecure:
        return (
            "this server speaks plaintext (--insecure): a client started with TLS cannot join; "
            "start it with --insecure too, or give this server certificates"
        )
    return (
        "this server requires TLS: a client started with --insecure cannot join (gRPC logs "
        "its attempts as 'Handshake failed ... WRONG_VERSION_NUMBER'); start it without "
        "--insecure, with its certificates"
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging()
    give_back_large_buffers()  # before gRPC's threads: updates' buffers leave when freed
    serve = config.serve
    try:
        check_plan(config)
        credentials = None if serve.insecure else server_credentials(serve.tls_dir)
        # Nothing of an earlier run is written over before its checkpoint and ledger pass.
        start = begin(config, run_signer(config))
    except (OSError, ValueError, ResumeError) as error:  # TLSSetupError, LedgerError: ValueError
        log.error("%s", error)
        return 2
    coordinator = Coordinator(
        poll_seconds=serve.poll_seconds,
        report_hint=tls_hint(serve.insecure),
        members=serve.members,
        # A client gets as long to call again after its stream ends as it may stay silent.
        return_seconds=serve.idle_timeout,
    )
    address = f"{serve.host}:{serve.port}"
    if serve.insecure:
        log.warning("serving WITHOUT TLS (--insecure): clients are not authenticated")
    try:
        server, health_servicer = build_server(
            coordinator,
            address,
            serve.workers,
            serve.max_update_bytes,
            credentials,
            Admission(serve.max_inflight_bytes),
            serve.reflection,
            serve.idle_timeout,
            serve.receive_window_kb,
        )
        probes = serve.health_port and build_health_server(
            f"127.0.0.1:{serve.health_port}", health_servicer, serve.reflection, serve.idle_timeout
        )
    except (OSError, ValueError) as error:  # TLSSetupError is a ValueError
        log.error("%s", error)
        return 2
    results = results_file(config)
    live = None
    if serve.http_port:
        run = RunInfo(
            config.model.model,
            config.strategy.strategy,
            config.strategy.aggregation,
            config.run.rounds,
            config.run.forecast,
        )
        try:
            live = LiveView(LiveState(coordinator, results, run), serve.http_host, serve.http_port)
        except OSError as error:
            log.error("%s", error)
            return 2
        live.start()
    server.start()
    if probes:
        probes.start()
    log.info(
        "fedstock server %s listening on %s; model %s, %d rounds, quorum %d",
        SOFTWARE_VERSION,
        address,
        config.model.model,
        config.run.rounds,
        config.run.min_clients,
    )
    status = run_to_end(
        lambda: federate(config, coordinator, results, start),
        coordinator,
        server,
        health_servicer,
        results,
        grace_seconds=serve.poll_seconds + 5,
    )
    if probes:
        probes.stop(grace=0).wait()
    log.info("results written to %s", config.results)
    if live is not None:
        live.linger(serve.linger)
        live.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
