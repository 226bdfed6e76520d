"""The command line of `python -m server`: flags and FEDSTOCK_* variables onto typed settings.

This is the only server module that knows argparse; what the flags ask for is checked here
once, and the rest of the server receives settings (server/config.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common.cli import env, env_flag
from common.preprocess import SETTINGS
from server import analysis, privacy, strategies
from server.config import MODES, Buffering, ConfigError, RunSettings
from server.model_selection import parse_grid
from server.models import MODEL_HELP, OPTIONS, STRATEGIES

# Models whose update is a weight vector that can be applied as a step from another version.
ASYNC_MODELS = ("lr", "lr-sgd", "svm")


def build_parser() -> argparse.ArgumentParser:
    """Every flag of `python -m server`, its default read from its FEDSTOCK_* variable."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
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
    add(
        "--mode",
        choices=MODES,
        default=env("MODE", "sync"),
        help="sync: every round waits for all its clients; async: buffered asynchronous "
        "rounds (FedBuff): each client trains again as soon as it answers, a new global "
        "version every --buffer-size updates, stale updates weighted down, --rounds counts "
        "versions (lr, lr-sgd, svm) [FEDSTOCK_MODE]",
    )
    add(
        "--buffer-size",
        type=int,
        default=env("BUFFER_SIZE", "3"),
        help="async: updates that make one new global version (K) [FEDSTOCK_BUFFER_SIZE]",
    )
    add(
        "--staleness-exponent",
        type=float,
        default=env("STALENESS_EXPONENT", "0.5"),
        help="async: an update that started s versions ago counts (1+s)^-a of a fresh one "
        "[FEDSTOCK_STALENESS_EXPONENT]",
    )
    add(
        "--max-staleness",
        type=int,
        default=env("MAX_STALENESS", "0"),
        help="async: refuse (FAILED_PRECONDITION, never applied) updates that started more "
        "than this many versions ago; 0: no limit [FEDSTOCK_MAX_STALENESS]",
    )
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
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The flags, checked: a setting that cannot work ends the program with its reason."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.model not in STRATEGIES:
        parser.error(f"--model must be one of {', '.join(STRATEGIES)}, got {args.model!r}")
    if not 0 < args.port < 65536:
        parser.error(f"--port must be between 1 and 65535, got {args.port}")
    if not 0 <= args.http_port < 65536:
        parser.error(f"--http-port must be between 0 (off) and 65535, got {args.http_port}")
    if args.linger < 0:
        parser.error("--linger cannot be negative")
    try:
        args.grid = parse_grid(args.grid)
    except ValueError as error:
        parser.error(str(error))
    args.cv_folds = args.cv_folds or (5 if args.grid else 0)
    if args.cv_folds < 0 or args.cv_folds == 1:
        parser.error("--cv-folds must be 0 (no cross-validation) or at least 2")
    try:
        run_settings(args)
        buffering(args)
    except ConfigError as error:
        parser.error(str(error))
    problem = (
        privacy.check_arguments(args)
        or strategies.check_arguments(args)
        or _async_problem(args)
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


def run_settings(args: argparse.Namespace) -> RunSettings:
    """The rounds, quorum, deadlines and split the flags ask for; 0 available means the quorum."""
    return RunSettings(
        rounds=args.rounds,
        min_clients=args.min_clients,
        min_available=args.min_available or args.min_clients,
        round_timeout=args.round_timeout,
        join_timeout=args.join_timeout,
        setting=args.setting,
        test_fraction=args.test_fraction,
        seed=args.seed,
    )


def buffering(args: argparse.Namespace) -> Buffering:
    return Buffering(args.buffer_size, args.staleness_exponent, args.max_staleness)


def _async_problem(args: argparse.Namespace) -> str | None:
    """What is asked of the asynchronous mode that it cannot do."""
    if args.mode != "async":
        return None
    if args.model not in ASYNC_MODELS:
        return (
            f"--mode async applies each update as a step from the version it started from, "
            f"which needs a model of weights ({', '.join(ASYNC_MODELS)}), not {args.model}"
        )
    if args.privacy != "none":
        return (
            "--mode async does not take --privacy: secure aggregation and HE need a "
            "synchronous cohort, and the DP accounting is per synchronous round"
        )
    if args.cv_folds or args.grid:
        return "model selection (--cv-folds, --grid) runs synchronous rounds; use --mode sync"
    if args.contributions or args.importance or args.personalise:
        return (
            "the end-of-run analysis (--contributions, --importance, --personalise) follows "
            "synchronous rounds; use --mode sync"
        )
    if (args.strategy, args.aggregation, args.compression) != ("fedavg", "mean", "none"):
        return (
            "--mode async combines updates by their staleness-weighted mean: use it with "
            "--strategy fedavg, --aggregation mean and --compression none"
        )
    return None
