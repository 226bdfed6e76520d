"""`python -m server`: the aggregation daemon; every flag has an environment fallback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.logs import setup_logging
from common.tls import TLSSetupError, server_credentials
from common.wire import SERVER_OPTIONS, SOFTWARE_VERSION, ConfigScalar
from proto.fedstock.v1 import federation_pb2, federation_pb2_grpc
from server import analysis, asynchronous, privacy, strategies
from server.channel import TaskChannel
from server.cli import buffering, parse_args, run_settings
from server.coordinator import Coordinator
from server.ledger import Ledger
from server.lifecycle import run_to_end
from server.livestate import LiveState, RunInfo
from server.liveview import LiveView
from server.model_selection import ModelSelection
from server.models import ALL_OPTIONS, build_strategy
from server.results import ResultsFile
from server.rounds import RoundLoop
from server.servicer import FederationServicer
from server.strategy import Strategy

log = logging.getLogger("fedstock.server")


def build_server(
    coordinator: Coordinator,
    address: str,
    workers: int,
    max_update_bytes: int,
    credentials: grpc.ServerCredentials | None = None,
    health_address: str | None = None,
) -> tuple[grpc.Server, health.HealthServicer]:
    """The gRPC server with the Federation, health and reflection services, bound to `address`.

    With `credentials` (mutual TLS) every Federation call must carry a province certificate;
    `health_address` adds a plaintext port for local probes, where Federation calls are refused.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=SERVER_OPTIONS)
    federation_pb2_grpc.add_FederationServicer_to_server(
        FederationServicer(coordinator, max_update_bytes, mutual_tls=credentials is not None),
        server,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_name = federation_pb2.DESCRIPTOR.services_by_name["Federation"].full_name
    reflection.enable_server_reflection(
        (service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    ports = [(address, credentials)] + ([(health_address, None)] if health_address else [])
    for where, secure in ports:
        try:
            if secure is None:
                server.add_insecure_port(where)
            else:
                server.add_secure_port(where, secure)
        except RuntimeError as error:
            raise OSError(
                f"cannot listen on {where}: is the port already in use? ({error})"
            ) from None
    for name in ("", service_name):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer


def open_ledger(path: Path, resuming: bool) -> Ledger:
    """The run's ledger; a fresh run keeps an earlier run's ledger aside, under its head hash."""
    if path.exists() and not resuming:
        kept = path.with_name(f"{path.stem}-{Ledger(path).head[:12]}{path.suffix}")
        path.replace(kept)
        log.info("an earlier run's ledger is kept as %s", kept)
    return Ledger(path)


def strategy_builder(args: argparse.Namespace) -> Callable[[Mapping[str, ConfigScalar]], Strategy]:
    """Builds the strategy the flags ask for from model options (model selection varies them)."""

    def build(params: Mapping[str, ConfigScalar]) -> Strategy:
        return strategies.wrap(privacy.wrap(build_strategy(args.model, params), args), args)

    return build


def check_plan(args: argparse.Namespace) -> None:
    """ValueError if the strategy or the analysis the flags ask for cannot be built."""
    strategy = strategy_builder(args)({name: getattr(args, name) for name in ALL_OPTIONS})
    wanted = analysis.AnalysisSettings.from_args(args)
    if wanted is not None:
        analysis.check_supported(wanted, strategy)


def results_file(args: argparse.Namespace) -> ResultsFile:
    return ResultsFile(
        args.results,
        {
            "model": args.model,
            "setting": args.setting,
            "server_version": SOFTWARE_VERSION,
            "config": {
                **{k: str(v) for k, v in vars(args).items()},
                "min_available": str(run_settings(args).min_available),
            },
        },
    )


def federate(args: argparse.Namespace, channel: TaskChannel, results: ResultsFile) -> None:
    """The run the flags describe, over any task channel: statistics, rounds, analysis."""
    options = {name: getattr(args, name) for name in ALL_OPTIONS}
    build = strategy_builder(args)
    settings = run_settings(args)
    checkpoint = args.results.with_name("checkpoint.npz")
    ledger = open_ledger(args.results.with_name("ledger.jsonl"), resuming=checkpoint.exists())
    selection = ModelSelection(build, options, args.grid, args.cv_folds)
    wanted = analysis.AnalysisSettings.from_args(args)
    after = analysis.Analysis(wanted) if wanted else None
    strategy = build(options)
    loop = (
        asynchronous.AsyncLoop(
            channel,
            strategy,
            settings,
            results,
            ledger,
            checkpoint,
            buffering=buffering(args),
        )
        if args.mode == "async"
        else RoundLoop(channel, strategy, settings, results, ledger, checkpoint, after)
    )
    loop.run(selection.choose if args.cv_folds else None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        check_plan(args)
    except ValueError as error:
        log.error("%s", error)
        return 2
    coordinator = Coordinator(poll_seconds=args.poll_seconds)
    address = f"{args.host}:{args.port}"
    if args.insecure:
        log.warning("serving WITHOUT TLS (--insecure): clients are not authenticated")
    try:
        credentials = None if args.insecure else server_credentials(args.tls_dir)
        server, health_servicer = build_server(
            coordinator,
            address,
            args.workers,
            int(args.max_update_mb * (1 << 20)),
            credentials,
            f"127.0.0.1:{args.health_port}" if args.health_port else None,
        )
    except (OSError, TLSSetupError) as error:
        log.error("%s", error)
        return 2
    results = results_file(args)
    live = None
    if args.http_port:
        run = RunInfo(args.model, args.strategy, args.aggregation, args.rounds)
        try:
            live = LiveView(LiveState(coordinator, results, run), args.http_host, args.http_port)
        except OSError as error:
            log.error("%s", error)
            return 2
        live.start()
    server.start()
    log.info(
        "fedstock server %s listening on %s; model %s, %d rounds, quorum %d",
        SOFTWARE_VERSION,
        address,
        args.model,
        args.rounds,
        args.min_clients,
    )
    status = run_to_end(
        lambda: federate(args, coordinator, results),
        coordinator,
        server,
        health_servicer,
        results,
        grace_seconds=args.poll_seconds + 5,
    )
    log.info("results written to %s", args.results)
    if live is not None:
        live.linger(args.linger)
        live.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
