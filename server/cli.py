"""The command line of `python -m server`: flags and FEDSTOCK_* variables onto typed settings.

This is the only server module that knows argparse; what the flags ask for is checked here
once, and the rest of the server receives settings (server/config.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from common.cli import env, env_flag
from common.compression import METHODS
from common.features import FEATURE_SETS
from common.hyperparameters import ALL_OPTIONS, OPTIONS
from common.members import Members
from common.members import load as load_members
from common.preprocess import SETTINGS
from common.quantity import DEFAULT as DEFAULT_QUANTITY
from common.quantity import QUANTITIES
from common.registry import MODELS
from common.wire import DEFAULT_RECEIVE_WINDOW_KB, ConfigScalar
from server.admission import DEFAULT_INFLIGHT_MIB
from server.config import (
    MODES,
    AnalysisRequest,
    Buffering,
    ConfigError,
    ModelSettings,
    PrivacySettings,
    RunSettings,
    ServerConfig,
    ServeSettings,
    StrategySettings,
)
from server.model_selection import parse_grid
from server.privacy import DP_ACCOUNTANTS, PRIVACY_MODES
from server.strategies import STRATEGY_NAMES
from server.strategies.robust import AGGREGATIONS

# --workers 0: a handler thread for every member's session, these beside them, and at least
# as many as a server of the paper's nine provinces has always had.
SPARE_WORKERS, MIN_WORKERS = 16, 32


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
        choices=sorted(MODELS),
        default=env("MODEL", "lr"),
        help="; ".join(f"{spec.name}: {spec.summary}" for spec in MODELS.values())
        + " [FEDSTOCK_MODEL]",
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
        "--features",
        choices=FEATURE_SETS,
        default=env("FEATURES", "paper"),
        help="paper: the paper's columns (plus today's price forecasting tomorrow); technical: "
        "close and price with lagged returns, moving-average ratios, volatility, turnover and "
        "limit flags, each province's from its own rows (next-day only) [FEDSTOCK_FEATURES]",
    )
    add(
        "--forecast",
        choices=QUANTITIES,
        default=env("FORECAST", DEFAULT_QUANTITY),
        help="the quantity forecast and scored: price (tomorrow's average price, Table 2's), "
        "change (it minus today's close) or return (it over today's close, minus 1); change "
        "and return are next-day only [FEDSTOCK_FORECAST]",
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
        default=env("MAX_UPDATE_MB"),
        help="largest update a client may send, in MiB; at most --max-inflight-mb, and by "
        "default as much [FEDSTOCK_MAX_UPDATE_MB]",
    )
    add(
        "--max-inflight-mb",
        type=float,
        default=env("MAX_INFLIGHT_MB", f"{DEFAULT_INFLIGHT_MIB:g}"),
        help="bytes all uploads being received may hold together, in MiB; an upload reserves "
        "its announced size before it is read and waits, first come first served, until that "
        "much is free (at most until its task's deadline) [FEDSTOCK_MAX_INFLIGHT_MB]",
    )
    add(
        "--receive-window-kb",
        type=int,
        default=env("RECEIVE_WINDOW_KB", str(DEFAULT_RECEIVE_WINDOW_KB)),
        help="how far each upload stream may send ahead of what the server has read, in KiB "
        "(HTTP/2 flow control): the server buffers up to this much a stream while its uploads "
        "come in; 0 lets gRPC size it by probing the link, which grows it to several MiB a "
        "stream on a fast one. Raise it for links far longer than 50 ms "
        "[FEDSTOCK_RECEIVE_WINDOW_KB]",
    )
    add(
        "--idle-timeout",
        type=float,
        default=env("IDLE_TIMEOUT", "60"),
        help="seconds a call may wait on its peer (for its next message, or to take ours) "
        "before the server cancels it; a session stream silent so long (no heartbeat) also "
        "fails its client's task then [FEDSTOCK_IDLE_TIMEOUT]",
    )
    add(
        "--reflection",
        action="store_true",
        default=env_flag("REFLECTION"),
        help="serve gRPC reflection (for grpcurl and the like); off by default, as it needs no "
        "credentials [FEDSTOCK_REFLECTION=1]",
    )
    add(
        "--workers",
        type=int,
        default=env("WORKERS", "0"),
        help="gRPC handler threads; each connected client holds one while it waits for work; "
        f"0 means one for every member and {SPARE_WORKERS} spare, at least {MIN_WORKERS} "
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
    add(
        "--members",
        type=Path,
        default=env("MEMBERS", None),
        metavar="FILE",
        help="the federation's members, if not the paper's nine provinces: a CSV with a header "
        "name,display_name,identity (identity: the common name of the member's certificate; "
        "it and display_name may be left out) or TOML [[member]] tables; python -m "
        "server.certs --members FILE issues their certificates [FEDSTOCK_MEMBERS]",
    )
    add(
        "--privacy",
        choices=PRIVACY_MODES,
        default=env("PRIVACY", "none"),
        help="none; dp-central: the server clips each update and adds Gaussian noise to the "
        "sum; dp-local: each client clips and adds the noise before sending; he: clients send "
        "Paillier ciphertexts that the server adds without a key; secagg: clients mask their "
        "updates so the server can unmask only their sum. Each applies to models whose "
        "updates are weight vectors (lr, lr-sgd, svm); rf takes dp-local only, each province "
        "drawing its trees' shapes at random and noising their leaves [FEDSTOCK_PRIVACY]",
    )
    add(
        "--dp-clip",
        type=float,
        default=env("DP_CLIP", "10"),
        help="L2 bound C on a client's step from the global parameters; for gbdt and rf-hist, "
        "the bound on each row's gradient; for rf, the bound each row's target is clipped to "
        "[FEDSTOCK_DP_CLIP]",
    )
    add(
        "--dp-noise-multiplier",
        type=float,
        default=env("DP_NOISE_MULTIPLIER", "1.0"),
        help="Gaussian noise σ in units of C (ignored with --dp-epsilon) "
        "[FEDSTOCK_DP_NOISE_MULTIPLIER]",
    )
    add(
        "--dp-epsilon",
        type=float,
        default=env("DP_EPSILON", "0"),
        help="target ε over all noisy releases, cross-validation's included: the noise is "
        "calibrated to reach it; 0 means use --dp-noise-multiplier [FEDSTOCK_DP_EPSILON]",
    )
    add(
        "--dp-delta",
        type=float,
        default=env("DP_DELTA", "1e-5"),
        help="δ at which ε is reported [FEDSTOCK_DP_DELTA]",
    )
    add(
        "--dp-score-clip",
        type=float,
        default=env("DP_SCORE_CLIP", "1.0"),
        help="with --privacy dp-local: bound B on each test row's squared error in the MSE a "
        "province releases, noised like its updates (in the target's units squared) "
        "[FEDSTOCK_DP_SCORE_CLIP]",
    )
    add(
        "--dp-bounds",
        type=Path,
        default=env("DP_BOUNDS", None),
        metavar="FILE",
        help="with --privacy dp-central or dp-local: a TOML file of each column's public range "
        "[lo, hi], which every row is clipped into before the statistics sum it, so that "
        "their noise has a bound to scale to (docs/dp.md); unset: the embedded market's, "
        "common/data/dp-bounds.toml [FEDSTOCK_DP_BOUNDS]",
    )
    add(
        "--dp-accountant",
        choices=DP_ACCOUNTANTS,
        default=env("DP_ACCOUNTANT", "rdp"),
        help="how every noisy release of the run (each round of each cross-validation fold "
        "and grid point, and of the final training) is composed into ε: rdp (Rényi DP) or pld "
        "(privacy loss distributions, tighter), both from dp-accounting [FEDSTOCK_DP_ACCOUNTANT]",
    )
    add(
        "--he-public-key",
        type=Path,
        default=env("HE_PUBLIC_KEY", "he.pub"),
        help="with --privacy he: the federation's threshold Paillier public key, he.pub from "
        "`python -m client.he_keys` (each province keeps its own share) "
        "[FEDSTOCK_HE_PUBLIC_KEY]",
    )
    add(
        "--he-insecure-key-size",
        action="store_true",
        default=env_flag("HE_INSECURE_KEY_SIZE"),
        help="with --privacy he: accept a Paillier key below 2048 bits, which can be factored: "
        "for tests only [FEDSTOCK_HE_INSECURE_KEY_SIZE=1]",
    )
    add(
        "--secagg-threshold",
        type=int,
        default=env("SECAGG_THRESHOLD", "0"),
        help="with --privacy secagg: clients that must stay in for a round's sum to be "
        "unmasked (any fewer learn nothing of a dropped client's secrets); 0 means "
        "⌊2n/3⌋+1 of the round's n clients [FEDSTOCK_SECAGG_THRESHOLD]",
    )
    add(
        "--secagg-bound",
        type=float,
        default=env("SECAGG_BOUND", "1e9"),
        help="with --privacy secagg: the largest |samples × weight| a client may send; the "
        "fixed-point ring is made just wide enough that n such values never overflow "
        "[FEDSTOCK_SECAGG_BOUND]",
    )
    add(
        "--secagg-neighbours",
        type=int,
        default=env("SECAGG_NEIGHBOURS", "0"),
        help="with --privacy secagg: SecAgg+, each client masks with and shares its secrets "
        "among only k neighbours (an even number) on a k-regular graph the server draws afresh "
        "each round, and --secagg-threshold counts within a neighbourhood (default "
        "⌊2(k+1)/3⌋+1); 0, or k ≥ n−1, masks every pair [FEDSTOCK_SECAGG_NEIGHBOURS]",
    )
    add(
        "--strategy",
        choices=STRATEGY_NAMES,
        default=env("STRATEGY", "fedavg"),
        help="fedavg; fedprox: clients add μ/2·‖w − w_global‖² to their loss; fednova: steps "
        "normalised by each client's local step count; scaffold: control variates against "
        "client drift; qfedavg: provinces with higher loss weigh more (fairness); fedadam, "
        "fedavgm: a server optimiser on the averaged step. All but fedavg and the server "
        "optimisers need --model lr-sgd [FEDSTOCK_STRATEGY]",
    )
    add(
        "--robust-sums",
        action="store_true",
        default=env_flag("ROBUST_SUMS"),
        help="lr-exact: leave out of the sum a province whose own solution is far from that of "
        "everybody else's sums (leave-one-out; needs 4 or more provinces) [FEDSTOCK_ROBUST_SUMS=1]",
    )
    add(
        "--robust-metrics",
        action="store_true",
        default=env_flag("ROBUST_METRICS"),
        help="the round's test MSE weighs each province's test rows up to the median "
        "province's only, so no province's claimed rows can make its MSE the federation's "
        "(the figure is then no longer the MSE over every test row) [FEDSTOCK_ROBUST_METRICS=1]",
    )
    add(
        "--aggregation",
        choices=AGGREGATIONS,
        default=env("AGGREGATION", "mean"),
        help="how the clients' steps are combined: the sample-weighted mean, or robust to "
        "poisoned updates: coordinate-wise median, trimmed mean, Krum, Multi-Krum "
        "[FEDSTOCK_AGGREGATION]",
    )
    add(
        "--trim-fraction",
        type=float,
        default=env("TRIM_FRACTION", "0.25"),
        help="share of updates dropped at each end per coordinate by the trimmed mean, rounded "
        "down: 0.25 drops 2 of 9, as many liars as Krum's default f [FEDSTOCK_TRIM_FRACTION]",
    )
    add(
        "--krum-f",
        type=int,
        default=env("KRUM_F", "2"),
        help="malicious clients Krum and Multi-Krum are built to tolerate [FEDSTOCK_KRUM_F]",
    )
    add("--mu", type=float, default=env("MU", "0.01"), help="FedProx's μ [FEDSTOCK_MU]")
    add("--q", type=float, default=env("Q", "1.0"), help="q-FedAvg's fairness q [FEDSTOCK_Q]")
    add(
        "--server-lr",
        type=float,
        default=env("SERVER_LR"),
        help="server learning rate of fedadam (default 0.05), fedavgm and scaffold (1.0) "
        "[FEDSTOCK_SERVER_LR]",
    )
    add(
        "--server-momentum",
        type=float,
        default=env("SERVER_MOMENTUM", "0.9"),
        help="FedAvgM's momentum β [FEDSTOCK_SERVER_MOMENTUM]",
    )
    add(
        "--compression",
        choices=METHODS,
        default=env("COMPRESSION", "none"),
        help="how clients send their step from the global weights after the first round: "
        "whole, as float16, as int8 with a scale, or its largest --topk-fraction coordinates; "
        "what is dropped is carried to the next round (error feedback) [FEDSTOCK_COMPRESSION]",
    )
    add(
        "--topk-fraction",
        type=float,
        default=env("TOPK_FRACTION", "0.1"),
        help="share of coordinates top-k compression sends [FEDSTOCK_TOPK_FRACTION]",
    )
    add(
        "--local-epochs",
        type=int,
        default=env("LOCAL_EPOCHS"),
        help="passes over its rows each client makes per round (lr-sgd: 1) [FEDSTOCK_LOCAL_EPOCHS]",
    )
    add(
        "--learning-rate",
        type=float,
        default=env("LEARNING_RATE"),
        help="clients' gradient step size (lr-sgd: 0.02; plain SGD diverges above 2 / the "
        "largest eigenvalue of a province's scaled features' second moments, about 0.05 on the "
        "synthetic market) [FEDSTOCK_LEARNING_RATE]",
    )
    add(
        "--batch-size",
        type=int,
        default=env("BATCH_SIZE"),
        help="clients' mini-batch rows (lr-sgd: 64) [FEDSTOCK_BATCH_SIZE]",
    )
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
    add(
        "--contributions",
        action="store_true",
        default=env_flag("CONTRIBUTIONS"),
        help="after the last round, value each province by leave-one-out and Monte-Carlo "
        "Shapley: the global test MSE of the model aggregated from each coalition's updates of "
        "the final round; for an ensemble, its members from the coalition (no --privacy) "
        "[FEDSTOCK_CONTRIBUTIONS=1]",
    )
    add(
        "--shapley-permutations",
        type=int,
        default=env("SHAPLEY_PERMUTATIONS", "20"),
        help="orders of the provinces the Shapley estimate averages over, drawn with --seed: "
        "random ones, each with all its rotations, so the count is rounded up to a multiple of "
        "the provinces [FEDSTOCK_SHAPLEY_PERMUTATIONS]",
    )
    add(
        "--importance",
        action="store_true",
        default=env_flag("IMPORTANCE"),
        help="after the last round, permutation feature importance of the global model: each "
        "province shuffles one feature's column of its test rows at a time [FEDSTOCK_IMPORTANCE=1]",
    )
    add(
        "--importance-repeats",
        type=int,
        default=env("IMPORTANCE_REPEATS", "5"),
        help="shuffles per feature [FEDSTOCK_IMPORTANCE_REPEATS]",
    )
    add(
        "--personalise",
        action="store_true",
        default=env_flag("PERSONALISE"),
        help="after the last round, each province fine-tunes the global model on its own "
        "training rows and reports its test MSE beside the global model's; the fine-tuned "
        "model stays with the province; an ensemble adds members grown on the province's "
        "rows [FEDSTOCK_PERSONALISE=1]",
    )
    add(
        "--personalise-epochs",
        type=int,
        default=env("PERSONALISE_EPOCHS", "1"),
        help="passes over its training rows each province fine-tunes lr-sgd and svm for "
        "[FEDSTOCK_PERSONALISE_EPOCHS]",
    )
    add(
        "--personalise-pull",
        type=float,
        default=env("PERSONALISE_PULL", "0.01"),
        help="λ of lr and lr-exact's fine-tuning, argmin ‖Xw − y‖²/n + λ‖w − w_global‖² on the "
        "province's rows (scaled features): 0 is the province's own least squares "
        "[FEDSTOCK_PERSONALISE_PULL]",
    )
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


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    """The settings the flags ask for; one that cannot work ends the program with its reason."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return server_config(args)
    except ConfigError as error:
        parser.error(str(error))


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The parsed flags as typed settings: each section by the names of its flags."""
    try:
        grid = parse_grid(args.grid)
        members = load_members(args.members)
    except ValueError as error:  # MembersError among them
        raise ConfigError(str(error)) from None
    return ServerConfig(
        run=RunSettings(
            **_section(RunSettings, args, min_available=args.min_available or args.min_clients)
        ),
        serve=ServeSettings(
            **_section(ServeSettings, args, members=members, workers=workers(args, members))
        ),
        model=ModelSettings(
            model=args.model,
            options={name: getattr(args, name) for name in ALL_OPTIONS},
            grid=grid,
            cv_folds=args.cv_folds or (5 if grid else 0),
            cv_embargo=args.cv_embargo,
        ),
        strategy=StrategySettings(**_section(StrategySettings, args)),
        privacy=PrivacySettings(**_section(PrivacySettings, args)),
        analysis=AnalysisRequest(**_section(AnalysisRequest, args)),
        mode=args.mode,
        buffering=Buffering(args.buffer_size, args.staleness_exponent, args.max_staleness),
        results=args.results,
    )


def workers(args: argparse.Namespace, members: Members) -> int:
    """--workers, or by default enough that every member's session has its handler thread (a
    Session stream holds one for as long as it is open)."""
    return args.workers or max(MIN_WORKERS, len(members) + SPARE_WORKERS)


def _section(kind: type, args: argparse.Namespace, **given: object) -> dict[str, object]:
    """The flags whose names are the fields of the settings `kind`, with `given` overriding."""
    return {f.name: getattr(args, f.name) for f in fields(kind)} | given


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Every model's hyperparameters (common/hyperparameters.py) and model selection."""
    for title, options in OPTIONS.items():
        group = parser.add_argument_group(title)
        for option in options:
            group.add_argument(
                option.flag,
                dest=option.name,
                type=_flag_type(option.parse),
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
        "--cv-embargo",
        type=int,
        default=env("CV_EMBARGO", "5"),
        metavar="DAYS",
        help="next-day setting: folds are blocks of days, the same in every province, and a "
        "fold's training rows keep this many days clear of its validation days on either "
        "side; the paper setting's folds are random [FEDSTOCK_CV_EMBARGO]",
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


def _flag_type(parse: Callable[[str], ConfigScalar]) -> Callable[[str], ConfigScalar]:
    """`parse` for argparse, which shows an ArgumentTypeError's message as it is."""

    def checked(text: str) -> ConfigScalar:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    checked.__name__ = parse.__name__
    return checked
