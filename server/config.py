"""The server's settings as typed values, each checking itself when it is made.

Flags and environment variables are mapped onto these in server/cli.py; the domain modules
take these values and never see the command line. A setting that cannot work raises
ConfigError with a message naming the flag, so the command line can show it as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common import dpbounds, quantity
from common.cli import ConfigError
from common.compression import METHODS
from common.members import PAPER, Members
from common.models.histgrow import TREE_MODELS
from common.preprocess import SETTINGS, features_for
from common.registry import MODELS, model_spec, vector_models
from common.settings import DataSettings
from common.wire import DEFAULT_RECEIVE_WINDOW_KB, ConfigScalar, server_options
from server.privacy import DP_ACCOUNTANTS, DP_MODES, PRIVACY_MODES
from server.strategies import STRATEGY_NAMES
from server.strategies.robust import AGGREGATIONS

MODES = ("sync", "async")
# Algorithms whose clients must train by gradient steps.
GRADIENT_STRATEGIES = ("fedprox", "fednova", "scaffold", "qfedavg")


@dataclass(frozen=True)
class RunSettings:
    """How many rounds, how many clients make a quorum, how long to wait, how rows are split."""

    rounds: int
    min_clients: int
    min_available: int
    round_timeout: float
    join_timeout: float
    setting: str
    test_fraction: float
    seed: int
    features: str = "paper"
    # Each province's test rows weigh at most the median province's (server/robust_metrics.py).
    robust_metrics: bool = False
    forecast: str = quantity.DEFAULT  # the quantity targets and scores are in (common/quantity.py)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError("--rounds must be at least 1")
        if self.min_clients < 1:
            raise ConfigError("--min-clients must be at least 1")
        if self.min_available < self.min_clients:
            raise ConfigError("--min-available cannot be below --min-clients")
        if self.setting not in SETTINGS:
            raise ConfigError(
                f"--setting must be one of {', '.join(SETTINGS)}, got {self.setting!r}"
            )
        if not 0 < self.test_fraction < 1:
            raise ConfigError("--test-fraction must lie strictly between 0 and 1")
        try:
            features_for(self.setting, self.features)
        except ValueError as error:
            raise ConfigError(f"--features {self.features}: {error}") from None
        try:
            quantity.check(self.forecast, self.setting)
        except ValueError as error:
            raise ConfigError(f"--forecast {self.forecast}: {error}") from None

    def data_config(self) -> dict[str, ConfigScalar]:
        """What every client needs to prepare its rows the same way."""
        return DataSettings(
            self.setting, self.test_fraction, self.seed, self.features, forecast=self.forecast
        ).to_config()


@dataclass(frozen=True)
class Buffering:
    """The asynchronous mode's settings: K, the staleness exponent a, the largest staleness."""

    size: int
    exponent: float
    max_staleness: int

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError("--buffer-size must be at least 1")
        if not 0 <= self.exponent < math.inf:
            raise ConfigError("--staleness-exponent must be a non-negative number")
        if self.max_staleness < 0:
            raise ConfigError("--max-staleness cannot be negative (0: no limit)")


@dataclass(frozen=True)
class ServeSettings:
    """Where the server listens, how it holds clients, and its live view."""

    host: str
    port: int
    poll_seconds: float
    max_update_mb: float | None  # None: as large as the in-flight budget
    max_inflight_mb: float
    idle_timeout: float
    reflection: bool
    workers: int
    tls_dir: Path
    insecure: bool
    health_port: int
    http_port: int
    http_host: str
    linger: float
    members: Members = PAPER  # who may join (--members FILE)
    receive_window_kb: int = DEFAULT_RECEIVE_WINDOW_KB  # each upload stream's; 0: gRPC's probe

    def __post_init__(self) -> None:
        try:
            server_options(self.receive_window_kb)
        except ValueError as error:
            raise ConfigError(f"--receive-window-kb: {error}") from None
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port must be between 1 and 65535, got {self.port}")
        if not 0 <= self.http_port < 65536:
            raise ConfigError(
                f"--http-port must be between 0 (off) and 65535, got {self.http_port}"
            )
        if self.linger < 0:
            raise ConfigError("--linger cannot be negative")
        if not self.idle_timeout > 0:
            raise ConfigError("--idle-timeout must be positive")
        if not (
            self.max_inflight_mb > 0 and (self.max_update_mb is None or self.max_update_mb > 0)
        ):
            raise ConfigError("--max-update-mb and --max-inflight-mb must be positive")
        if self.max_update_mb is not None and self.max_update_mb > self.max_inflight_mb:
            # Such an update could never be admitted: it would wait for room that never comes.
            raise ConfigError(
                f"--max-update-mb {self.max_update_mb:g} is more than --max-inflight-mb "
                f"{self.max_inflight_mb:g}; no update that large could be received"
            )

    @property
    def max_update_bytes(self) -> int:
        return int((self.max_update_mb or self.max_inflight_mb) * (1 << 20))

    @property
    def max_inflight_bytes(self) -> int:
        return int(self.max_inflight_mb * (1 << 20))


@dataclass(frozen=True)
class PrivacySettings:
    """The privacy mechanism (`privacy`) and the parameters of each one."""

    privacy: str
    dp_clip: float
    dp_noise_multiplier: float
    dp_epsilon: float
    dp_delta: float
    he_public_key: Path
    secagg_threshold: int
    secagg_bound: float
    secagg_neighbours: int
    dp_accountant: str = "rdp"
    he_insecure_key_size: bool = False
    dp_score_clip: float = 1.0
    # Under DP: the public range of every column the statistics sum (common/dpbounds.py);
    # None: the embedded market's.
    dp_bounds: Path | None = None

    def __post_init__(self) -> None:
        if self.privacy not in PRIVACY_MODES:
            raise ConfigError(f"--privacy must be one of {', '.join(PRIVACY_MODES)}")
        if self.dp_clip <= 0 or self.dp_noise_multiplier < 0 or self.dp_epsilon < 0:
            raise ConfigError(
                "--dp-clip must be positive, --dp-noise-multiplier and --dp-epsilon non-negative"
            )
        if self.secagg_threshold < 0 or self.secagg_bound <= 0:
            raise ConfigError("--secagg-threshold must be non-negative and --secagg-bound positive")
        if self.secagg_neighbours < 0 or self.secagg_neighbours % 2:
            raise ConfigError("--secagg-neighbours must be an even number, or 0 for every pair")
        if self.secagg_neighbours and self.secagg_threshold > self.secagg_neighbours + 1:
            raise ConfigError(
                "--secagg-threshold cannot exceed a neighbourhood: --secagg-neighbours + 1"
            )
        if self.secagg_neighbours and 0 < self.secagg_threshold * 2 <= self.secagg_neighbours + 1:
            raise ConfigError(
                "--secagg-threshold must be a majority of a neighbourhood: --secagg-neighbours + 1"
            )
        if not 0 < self.dp_score_clip < math.inf:
            raise ConfigError("--dp-score-clip must be a positive number")
        if not 0 < self.dp_delta < 1:
            raise ConfigError("--dp-delta must lie strictly between 0 and 1")
        if self.dp_accountant not in DP_ACCOUNTANTS:
            raise ConfigError(f"--dp-accountant must be one of {', '.join(DP_ACCOUNTANTS)}")


@dataclass(frozen=True)
class StrategySettings:
    """The federated algorithm, its robust aggregation, compression and local training."""

    strategy: str
    aggregation: str
    trim_fraction: float
    krum_f: int
    mu: float
    q: float
    server_lr: float | None
    server_momentum: float
    compression: str
    topk_fraction: float
    local_epochs: int | None
    learning_rate: float | None
    batch_size: int | None
    robust_sums: bool = False

    def __post_init__(self) -> None:
        for name, value, names in (
            ("strategy", self.strategy, STRATEGY_NAMES),
            ("aggregation", self.aggregation, AGGREGATIONS),
            ("compression", self.compression, METHODS),
        ):
            if value not in names:
                raise ConfigError(f"--{name} must be one of {', '.join(names)}, got {value!r}")
        if not 0 <= self.trim_fraction < 0.5:
            raise ConfigError("--trim-fraction must lie in [0, 0.5)")
        if self.krum_f < 0 or self.mu < 0 or self.q < 0 or self.server_momentum < 0:
            raise ConfigError("--krum-f, --mu, --q and --server-momentum cannot be negative")
        for name, value in {**self.local_training(), "server_lr": self.server_lr}.items():
            if value is not None and value <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive")
        if not 0 < self.topk_fraction <= 1:
            raise ConfigError("--topk-fraction must lie in (0, 1]")
        if self.strategy == "scaffold" and self.compression != "none":
            raise ConfigError(
                "SCAFFOLD's control variates travel whole; use it with --compression none"
            )
        if self.strategy == "qfedavg" and self.aggregation != "mean":
            raise ConfigError(
                "q-FedAvg weighs the steps by loss itself; use it with --aggregation mean"
            )

    def local_training(self) -> dict[str, int | float | None]:
        """The local training settings a gradient-trained model takes from the command line."""
        asked = {
            "local_epochs": self.local_epochs,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
        }
        return {name: value for name, value in asked.items() if value is not None}

    @property
    def plain(self) -> bool:
        """Plain FedAvg of whole updates, with the model's own local training."""
        asked = (self.strategy, self.aggregation, self.compression)
        return asked == ("fedavg", "mean", "none") and not self.local_training()


@dataclass(frozen=True)
class AnalysisRequest:
    """Which end-of-run analyses are asked for, and their parameters."""

    contributions: bool
    shapley_permutations: int
    importance: bool
    importance_repeats: int
    personalise: bool
    personalise_epochs: int
    personalise_pull: float

    def __post_init__(self) -> None:
        for name in ("shapley_permutations", "importance_repeats", "personalise_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0 <= self.personalise_pull < math.inf:
            raise ConfigError("--personalise-pull must be a non-negative number")

    @property
    def wanted(self) -> bool:
        return self.contributions or self.importance or self.personalise


@dataclass(frozen=True)
class ModelSettings:
    """The model, its hyperparameters, and the grid cross-validation searches."""

    model: str
    options: Mapping[str, ConfigScalar]
    grid: Mapping[str, list[ConfigScalar]]
    cv_folds: int
    cv_embargo: int = 5

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.cv_folds < 0 or self.cv_folds == 1:
            raise ConfigError("--cv-folds must be 0 (no cross-validation) or at least 2")
        if self.grid and not self.cv_folds:
            raise ConfigError("--grid needs cross-validation: --cv-folds of at least 2")
        if self.cv_embargo < 0:
            raise ConfigError("--cv-embargo cannot be negative")


@dataclass(frozen=True)
class ServerConfig:
    """Everything a server run is asked to do, checked as a whole by `check`."""

    run: RunSettings
    serve: ServeSettings
    model: ModelSettings
    strategy: StrategySettings
    privacy: PrivacySettings
    analysis: AnalysisRequest
    mode: str
    buffering: Buffering
    results: Path

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        problem = self.incompatibility()
        if problem:
            raise ConfigError(problem)

    def incompatibility(self) -> str | None:
        """What the settings ask for together that cannot work: the one place this is decided."""
        quorum = self.run.min_clients
        if self.serve.workers < quorum + 4:
            return f"--workers must be at least --min-clients + 4 ({quorum + 4})"
        try:
            self.dp_ranges()
        except dpbounds.BoundsError as error:
            return str(error)
        return self._strategy_incompatibility() or (
            self._async_incompatibility() if self.mode == "async" else None
        )

    def dp_ranges(self) -> dpbounds.Ranges:
        """Under DP, the public range of each column the statistics sum, [features, target]
        in that order (a price target's move, common/dpbounds.py), from --dp-bounds; empty
        without DP."""
        if self.privacy.privacy not in DP_MODES:
            return {}
        run = self.run
        features = features_for(run.setting, run.features)
        path = self.privacy.dp_bounds or dpbounds.DEFAULT
        return dpbounds.for_columns(path, features, run.forecast, run.setting)

    def _strategy_incompatibility(self) -> str | None:
        spec, s = model_spec(self.model.model), self.strategy
        trees = spec.name in TREE_MODELS
        if trees and self.privacy.privacy not in ("none", "secagg", "dp-local"):
            return (
                f"--privacy {self.privacy.privacy} does not protect {spec.name}'s histograms; "
                "histogram trees take --privacy secagg or dp-local (or none)"
            )
        if trees and self.privacy.privacy == "dp-local":
            problem = _local_dp_trees(self.privacy, self.model.options)
            if problem:
                return problem
        if spec.noised_leaves and self.privacy.privacy != "none":
            problem = _private_forest(self.privacy, self.model)
            if problem:
                return problem
        elif self.privacy.privacy != "none" and not spec.vector and not trees:
            return (
                f"--privacy {self.privacy.privacy} needs a model whose updates are weight "
                f"vectors averaged by FedAvg ({', '.join(vector_models())}); forests and "
                "lr-exact's normal equations are not"
            )
        if self.privacy.privacy == "he" and (self.model.cv_folds or self.model.grid):
            return (
                "model selection (--cv-folds, --grid) trains the federation again for every "
                "fold and grid point, each a sum of the same rounds over a cohort that may "
                "differ; under --privacy he a province decrypts one sum per round and phase "
                "of a run, so that no two sums can be differenced: select the model without "
                "--privacy he"
            )
        if self.run.robust_metrics and self.privacy.privacy in ("secagg", "he"):
            return (
                f"--robust-metrics weighs each province's own test MSE, which --privacy "
                f"{self.privacy.privacy} keeps from the server (it learns the federation's "
                f"scores only)"
            )
        if self.analysis.wanted and self.privacy.privacy != "none":
            return (
                f"the end-of-run analysis (--contributions, --importance, --personalise) is "
                f"answered by each province in the clear: its test MSEs and, for "
                f"contributions, sums over its test rows, which --privacy "
                f"{self.privacy.privacy} neither sums nor noises; run the analysis without "
                f"--privacy"
            )
        if s.robust_sums and not spec.normal_equations:
            sums = ", ".join(m.name for m in MODELS.values() if m.normal_equations)
            return f"--robust-sums applies to --model {sums} only"
        if s.plain:
            return None
        if not spec.vector or self.privacy.privacy != "none":
            return (
                "--strategy, --aggregation and --compression need a model whose updates are "
                f"weight vectors averaged by FedAvg ({', '.join(vector_models())}), "
                "without --privacy"
            )
        if s.strategy in GRADIENT_STRATEGIES and not spec.gradient:
            return f"--strategy {s.strategy} needs clients that train by gradient steps"
        if s.local_training() and not spec.gradient:
            return "--local-epochs, --learning-rate and --batch-size apply to lr-sgd"
        return None

    def _async_incompatibility(self) -> str | None:
        """Every strategy, robust rule and compression that combines steps from one model runs
        asynchronously (the buffer rebases stale updates onto the newest version); what
        cannot, and why."""
        if "async" not in model_spec(self.model.model).schedules:
            return (
                f"--mode async applies each update as a step from the version it started from, "
                f"which needs a model of weights ({', '.join(vector_models())}), "
                f"not {self.model.model}"
            )
        if self.privacy.privacy != "none":
            return (
                "--mode async does not take --privacy: secure aggregation and HE need a "
                "synchronous cohort, and the DP accounting is per synchronous round"
            )
        s, k = self.strategy, self.buffering.size
        if s.strategy == "scaffold":
            return (
                "--mode async cannot run SCAFFOLD: its control variates are corrections against "
                "one global model, not steps a stale update could be rebased with"
            )
        if "krum" in s.aggregation and k < s.krum_f + 3:
            return (
                f"--aggregation {s.aggregation} scores each update against its nearest others "
                f"and needs more than f + 2 per version: --buffer-size {s.krum_f + 3} or more "
                f"with --krum-f {s.krum_f}"
            )
        if self.model.cv_folds or self.model.grid:
            return "model selection (--cv-folds, --grid) runs synchronous rounds; use --mode sync"
        if self.analysis.wanted:
            return (
                "the end-of-run analysis (--contributions, --importance, --personalise) follows "
                "synchronous rounds; use --mode sync"
            )
        return None

    def record(self) -> dict[str, str]:
        """Every setting by its flag's name, as text: what the results file says was asked."""
        sections = (self.run, self.serve, self.strategy, self.privacy, self.analysis)
        flat: dict[str, object] = {k: v for s in sections for k, v in vars(s).items()}
        flat.update(
            model=self.model.model,
            **self.model.options,
            grid=self.model.grid,
            cv_folds=self.model.cv_folds,
            cv_embargo=self.model.cv_embargo,
            mode=self.mode,
            buffer_size=self.buffering.size,
            staleness_exponent=self.buffering.exponent,
            max_staleness=self.buffering.max_staleness,
            results=self.results,
        )
        return {k: str(v) for k, v in flat.items()}


def _private_forest(privacy: PrivacySettings, model: ModelSettings) -> str | None:
    """What a union of local trees cannot do under a privacy mode: only each province drawing
    its trees' shapes and noising their leaves protects a tree (a tree is not a sum), and a
    count of releases --dp-epsilon cannot plan for."""
    if privacy.privacy != "dp-local":
        return (
            f"--privacy {privacy.privacy} cannot protect rf's trees: a forest is the union of "
            "the provinces' own trees, which the server receives whole (secure aggregation and "
            "HE hide sums, and a tree is not one; dp-central noises a sum of updates): "
            "--model rf-hist grows its trees from summed histograms and takes --privacy "
            "secagg or dp-local; rf takes --privacy dp-local, each province noising its own "
            "leaves"
        )
    if privacy.dp_epsilon:
        return (
            "--dp-epsilon cannot calibrate rf's leaf noise (each tree is a release); give "
            "--dp-noise-multiplier, and read ε in the results"
        )
    return None


def _local_dp_trees(privacy: PrivacySettings, options: Mapping[str, ConfigScalar]) -> str | None:
    """What local DP on histogram trees cannot do: its releases depend on how the trees grow,
    and early stopping's validation scores have no row bound to noise them by."""
    if privacy.dp_epsilon:
        return (
            "--dp-epsilon cannot calibrate histogram trees' noise (how many levels are asked "
            "depends on the trees); give --dp-noise-multiplier, and read ε in the results"
        )
    if options.get("gbdt_early_stopping"):
        return (
            "--gbdt-early-stopping scores validation rows in the clear, which --privacy "
            "dp-local does not allow"
        )
    return None
