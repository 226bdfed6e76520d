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

from common.cli import env, env_flag
from common.logs import setup_logging
from common.preprocess import SETTINGS
from common.tls import TLSSetupError, server_credentials
from common.wire import SERVER_OPTIONS, SOFTWARE_VERSION, ConfigScalar
from proto.fedstock.v1 import federation_pb2, federation_pb2_grpc
from server import analysis, asynchronous, privacy, strategies
from server.channel import TaskChannel
from server.coordinator import Coordinator
from server.ledger import Ledger
from server.lifecycle import run_to_end
from server.livestate import LiveState, RunInfo
from server.liveview import LiveView
from server.model_selection import ModelSelection, parse_grid
from server.models import ALL_OPTIONS, MODEL_HELP, OPTIONS, STRATEGIES, build_strategy
from server.results import ResultsFile
from server.rounds import RoundLoop, RunSettings
from server.servicer import FederationServicer
from server.strategy import Strategy

log = logging.getLogger("fedstock.server")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="Run the fedstock aggregation server: wait for province clients, run the "
        "rounds, write the results, exit 0 after the last round. Each flag falls back to the "
        "environment variable named in brackets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default=env("HOST", "[::]"), help="address to listen on [FEDSTOCK_HOST]")
    add("--port", type=int, default=env("PORT", "50051"), help="port to listen on [FEDSTOCK_PORT]")
    add(
        "--model",
        choices=sorted(STRATEGIES),
        default=env("MODEL", "lr"),
        help=f"{MODEL_HELP} [FEDSTOCK_MODEL]",
    )
    add("--rounds", type=int, default=env("ROUNDS", "3"), help="training rounds [FEDSTOCK_ROUNDS]")
    add(
        "--min-clients",
        type=int,
        default=env("MIN_CLIENTS", "9"),
        help="clients needed to start and to accept a round (the quorum) [FEDSTOCK_MIN_CLIENTS]",
    )
    add(
        "--min-available",
        type=int,
        default=env("MIN_AVAILABLE", "0"),
        help="clients that must be connected before training starts; 0 means --min-clients "
        "[FEDSTOCK_MIN_AVAILABLE]",
    )
    add(
        "--round-timeout",
        type=float,
        default=env("ROUND_TIMEOUT", "300"),
        help="seconds to wait for clients' answers in each phase of a round "
        "[FEDSTOCK_ROUND_TIMEOUT]",
    )
    add(
        "--join-timeout",
        type=float,
        default=env("JOIN_TIMEOUT", "600"),
        help="seconds to wait for the quorum to connect [FEDSTOCK_JOIN_TIMEOUT]",
    )
    add(
        "--setting",
        choices=SETTINGS,
        default=env("SETTING", "next-day"),
        help="next-day: forecast tomorrow's price, split by time; paper: same-day price with a "
        "random split, as the seed paper [FEDSTOCK_SETTING]",
    )
    add(
        "--test-fraction",
        type=float,
        default=env("TEST_FRACTION", "0.2"),
        help="share of each province's rows held out for evaluation [FEDSTOCK_TEST_FRACTION]",
    )
    add(
        "--seed",
        type=int,
        default=env("SEED", "0"),
        help="seed of the random split in the paper setting [FEDSTOCK_SEED]",
    )
    add(
        "--results",
        type=Path,
        default=Path(env("RESULTS", "runs/results.json")),
        help="JSON results file, rewritten after every round [FEDSTOCK_RESULTS]",
    )
    add(
        "--poll-seconds",
        type=float,
        default=env("POLL_SECONDS", "20"),
        help="how long a client's request for work is held open before it is told to wait "
        "[FEDSTOCK_POLL_SECONDS]",
    )
    add(
        "--max-update-mb",
        type=float,
        default=env("MAX_UPDATE_MB", "4096"),
        help="largest update a client may send, in MiB [FEDSTOCK_MAX_UPDATE_MB]",
    )
    add(
        "--workers",
        type=int,
        default=env("WORKERS", "32"),
        help="gRPC handler threads; each connected client holds one while it waits for work "
        "[FEDSTOCK_WORKERS]",
    )
    add(
        "--tls-dir",
        type=Path,
        default=env("TLS_DIR", "certs"),
        help="folder with ca.pem, server.pem and server.key (see python -m server.certs); "
        "clients must present a certificate from the same CA naming their province "
        "[FEDSTOCK_TLS_DIR]",
    )
    add(
        "--insecure",
        action="store_true",
        default=env_flag("INSECURE"),
        help="serve without TLS: anyone who reaches the port can join as any province "
        "[FEDSTOCK_INSECURE=1]",
    )
    privacy.add_arguments(add, env)
    strategies.add_arguments(add, env)
    asynchronous.add_arguments(add, env)
    analysis.add_arguments(add, env)
    add(
        "--health-port",
        type=int,
        default=env("HEALTH_PORT", "0"),
        help="also serve the health service in plaintext on 127.0.0.1:PORT for local probes "
        "(0: no such port) [FEDSTOCK_HEALTH_PORT]",
    )
    add(
        "--http-port",
        type=int,
        default=env("HTTP_PORT", "0"),
        help="serve the live view on this port: a web page of the run at /, its state as JSON "
        "at /api/state, Prometheus metrics at /metrics (0: off) [FEDSTOCK_HTTP_PORT]",
    )
    add(
        "--http-host",
        default=env("HTTP_HOST", "127.0.0.1"),
        help="address of the live view; it is plaintext and open to anyone who reaches it "
        "[FEDSTOCK_HTTP_HOST]",
    )
    add(
        "--linger",
        type=float,
        default=env("LINGER", "0"),
        help="seconds the live view stays up after the run ends (Ctrl-C ends it sooner) "
        "[FEDSTOCK_LINGER]",
    )
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if args.model not in STRATEGIES:
        parser.error(f"--model must be one of {', '.join(STRATEGIES)}, got {args.model!r}")
    if args.setting not in SETTINGS:
        parser.error(f"--setting must be one of {', '.join(SETTINGS)}, got {args.setting!r}")
    if not 0 < args.port < 65536:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    if not 0 <= args.http_port < 65536:
        parser.error(f"--http-port must be between 0 (off) and 65535, got {args.http_port}")
    if args.linger < 0:
        parser.error("--linger cannot be negative")
    for flag in ("rounds", "min_clients"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    args.min_available = args.min_available or args.min_clients
    if args.min_available < args.min_clients:
        parser.error("--min-available cannot be below --min-clients")
    if not 0 < args.test_fraction < 1:
        parser.error("--test-fraction must lie strictly between 0 and 1")
    try:
        args.grid = parse_grid(args.grid)
    except ValueError as error:
        parser.error(str(error))
    args.cv_folds = args.cv_folds or (5 if args.grid else 0)
    if args.cv_folds < 0 or args.cv_folds == 1:
        parser.error("--cv-folds must be 0 (no cross-validation) or at least 2")
    problem = (
        privacy.check_arguments(args)
        or strategies.check_arguments(args)
        or asynchronous.check_arguments(args)
        or analysis.check_arguments(args)
    )
    if problem:
        parser.error(problem)
    if args.workers < args.min_clients + 4:
        parser.error(f"--workers must be at least --min-clients + 4 ({args.min_clients + 4})")
    return args


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Every model's hyperparameters (server/models.py) and model selection, one group each."""
    for title, options in OPTIONS.items():
        group = parser.add_argument_group(title)
        for option in options:
            group.add_argument(
                option.flag,
                dest=option.name,
                type=option.parse,
                default=env(option.env, option.default),
                help=f"{option.help} [FEDSTOCK_{option.env}]",
            )
    group = parser.add_argument_group("model selection (federated cross-validation)")
    group.add_argument(
        "--cv-folds",
        type=int,
        default=env("CV_FOLDS", "0"),
        help="before training, cross-validate on this many folds of every province's training "
        "rows (the paper: 5); 0: none, or 5 with --grid [FEDSTOCK_CV_FOLDS]",
    )
    group.add_argument(
        "--grid",
        nargs="+",
        default=(env("GRID") or "").split(),
        metavar="NAME=V1,V2",
        help="hyperparameter values to cross-validate, e.g. svm-c=0.1,1,10 rf-max-depth=8,16: "
        "every combination is tried and the best trains the final model [FEDSTOCK_GRID, "
        "items separated by spaces]",
    )


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
            "config": {k: str(v) for k, v in vars(args).items()},
        },
    )


def federate(args: argparse.Namespace, channel: TaskChannel, results: ResultsFile) -> None:
    """The run the flags describe, over any task channel: statistics, rounds, analysis."""
    options = {name: getattr(args, name) for name in ALL_OPTIONS}
    build = strategy_builder(args)
    settings = RunSettings(
        rounds=args.rounds,
        min_clients=args.min_clients,
        min_available=args.min_available,
        round_timeout=args.round_timeout,
        join_timeout=args.join_timeout,
        setting=args.setting,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )
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
            buffering=asynchronous.Buffering.from_args(args),
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
