"""A province's own work on its own rows: statistics, training and evaluation.

Rows never leave this module; what it returns are sums, parameters and metrics.
"""

from __future__ import annotations

import time
from functools import cached_property

import numpy as np
import pandas as pd

from client import analysis, chain, histograms
from client.chain import Outcome, Task
from client.groups import TaskGroups
from client.privacy import ClientPrivacy, PrivacyError
from client.trainers import DERIVED, Trainer, trainer_for
from common import dpbounds, dpstats, forecast, preprocess, quantity, timesplit
from common.crossval import TimeFolds, fold_split
from common.model_settings import ModelTask, StartMetrics
from common.protection import DPStatistics, Protection
from common.settings import DataSettings, FoldSettings
from common.tensors import Arrays


def clipped(asked: DPStatistics, data: preprocess.Split, forecast: str) -> Arrays:
    """The statistics of the province's rows clipped into the public ranges the server sends,
    of [features, target], or of [features, target − close] when it asks for a price's move
    (common/dpbounds.py); no row is dropped."""
    try:
        ranges = dpbounds.from_text(asked.dp_bounds)
    except dpbounds.BoundsError as error:
        raise PrivacyError(str(error)) from None
    names, close = list(ranges), dpbounds.move_from(ranges)
    if names[:-1] != data.features or names[-1] not in (preprocess.TARGET, dpbounds.MOVE):
        columns = [*data.features, preprocess.TARGET]
        raise PrivacyError(f"the server's dp_bounds name {names}, not the columns {columns}")
    if names[-1] == dpbounds.MOVE and (close is None or forecast != quantity.DEFAULT):
        raise PrivacyError(
            f"the server asks for the target's move from today's close, of a {forecast} "
            f"forecast with the features {data.features}; it needs a price and the close"
        )
    y = data.y_train if close is None else data.y_train - data.x_train[:, close]
    return dpstats.clipped_statistics(data.x_train, y, *dpbounds.limits(ranges))


class LocalWork:
    def __init__(
        self, raw: pd.DataFrame, privacy: ClientPrivacy | None = None, slowdown: float = 1.0
    ) -> None:
        self.raw = raw
        self.privacy = privacy or ClientPrivacy()
        # Simulates a slower machine: training takes `slowdown` times as long as it did.
        self.slowdown = slowdown
        self._splits: dict[DataSettings, preprocess.Split] = {}
        # The rows last scaled, per part ("train", "test"): every round scales them the same
        # way, so they are scaled once for as long as the settings and the scaler stay.
        self._scaled: dict[str, tuple[tuple, np.ndarray]] = {}

    def split(self, groups: TaskGroups) -> preprocess.Split:
        """The province's split for the federation's data settings, computed once per setting.

        With `cv_folds` in the task, the split is a cross-validation fold of the training rows:
        random in the paper setting, of days with the federation's cutoff.
        """
        data = groups.need(DataSettings)
        if data not in self._splits:
            split = self._splits[data] = preprocess.split(
                self.raw,
                data.setting,
                data.test_fraction,
                data.seed,
                data.features,
                data.split_cutoff,
                data.forecast,
            )
            # Read-only, as every round reads them: the trainers keep what they derive from
            # rows that cannot change (client/trainers.py).
            for rows in (
                split.x_train,
                split.y_train,
                split.x_test,
                split.y_test,
                *split.reference_test.values(),
            ):
                rows.flags.writeable = False
        fold = groups.need(FoldSettings)
        if fold.cv_folds:
            by_time = None
            if data.split_cutoff:  # forecasting tomorrow: folds of days, one calendar for all
                by_time = TimeFolds(data.split_start, data.split_cutoff, fold.cv_embargo)
            return fold_split(self._splits[data], fold.cv_folds, fold.cv_fold, data.seed, by_time)
        return self._splits[data]

    @cached_property
    def _next_day_dates(self) -> np.ndarray:
        """The dates of the rows with a tomorrow, asked for years, then for days of some years:
        computed once, as the rows do not change."""
        return preprocess.next_day_dates(self.raw)

    def statistics(self, groups: TaskGroups, parameters: Arrays | None = None) -> Outcome:
        """n, Σz and Σzzᵀ of the training rows; `parameters` carry what a privacy mode relays."""
        histograms.warm_up(groups)
        return self.privacy.run(Task(chain.STATISTICS, groups, parameters), self._statistics)

    def _statistics(self, task: Task) -> Outcome:
        started = time.perf_counter()
        asked = task.groups.dates
        if asked is not None:  # before the split: the rows per calendar year, or per day of some
            dates = self._next_day_dates
            if asked.day_counts == "years":
                counts = {"years": timesplit.year_counts(dates)}
            else:
                counts = {"days": timesplit.day_counts(dates, asked.years(), asked.width())}
            seconds = {"seconds": time.perf_counter() - started}
            return Outcome(len(dates), seconds, {"count": np.array(float(len(dates))), **counts})
        data = self.split(task.groups)
        asked = task.groups.dp_statistics
        if asked is None:
            sums = preprocess.statistics(data.x_train, data.y_train)
        else:  # DP: each row's columns clipped into the public ranges
            sums = clipped(asked, data, task.groups.need(DataSettings).forecast)
        return Outcome(len(data.y_train), {"seconds": time.perf_counter() - started}, sums)

    def train(
        self,
        groups: TaskGroups,
        scaler: tuple[np.ndarray, np.ndarray],
        parameters: Arrays | None,
    ) -> Outcome:
        started = time.perf_counter()
        outcome = self.privacy.run(
            Task(chain.TRAIN, groups, parameters), lambda task: self._train(task, scaler)
        )
        if self.slowdown > 1:  # even sleep(0) yields the CPU: on a loaded machine, for long
            time.sleep((self.slowdown - 1) * (time.perf_counter() - started))
        outcome.metrics["seconds"] = time.perf_counter() - started
        return outcome

    def _train(self, task: Task, scaler: tuple[np.ndarray, np.ndarray]) -> Outcome:
        groups, parameters = task.groups, task.parameters
        data = self.split(groups)
        if not len(data.y_train):  # a fold of days before this province's first: no part in it
            return Outcome(0, {})
        trainer = trainer_for(groups.need(ModelTask).model)
        x = self._inputs(trainer, groups, "train", scaler)
        update = trainer.fit(x, data.y_train, parameters, groups)
        metrics = {}
        # Not a question's answer, nor under dp-local, whose chain keeps the training MSE home
        # (and whose drawn trees are whole only once their leaves are noised).
        kept_home = groups.need(Protection).privacy == "dp-local"
        if trainer.update_is_model and groups.tree_step is None and not kept_home:
            metrics[forecast.TRAIN_MSE] = forecast.mse(
                trainer.predict(update, x, groups), data.y_train
            )
        if trainer.local_steps is not None:
            metrics["local_steps"] = float(trainer.local_steps(len(data.y_train), groups))
            # q-FedAvg weighs provinces by the global model's loss; nobody else asks for it.
            if parameters is not None and groups.need(StartMetrics).start_metrics:
                metrics["start_mse"] = forecast.mse(
                    trainer.predict(parameters, x, groups), data.y_train
                )
                if trainer.local_loss is not None:  # ... in the units its steps minimise
                    metrics["start_loss"] = trainer.local_loss(parameters, x, data.y_train, groups)
        return Outcome(len(data.y_train), metrics, update)

    def decrypt(self, groups: TaskGroups, parameters: Arrays | None) -> Outcome:
        """This province's partial decryption of the encrypted sum in `parameters`."""
        return self.privacy.run(Task(chain.DECRYPT, groups, parameters), self._decrypt)

    def _decrypt(self, task: Task) -> Outcome:
        if task.groups.need(Protection).privacy != "he":
            raise PrivacyError("the server asks for a decryption outside --privacy he")
        return Outcome(len(self.split(task.groups).y_train), {})

    def secagg(self, step: str, groups: TaskGroups, parameters: Arrays | None) -> Outcome:
        """One step of secure aggregation's key exchange or unmasking (client/secagg.py)."""
        started = time.perf_counter()
        protocol = self.privacy.secagg
        if step == "keys":
            arrays = protocol.keys(groups)
        elif step == "shares":
            arrays = protocol.shares(groups, parameters or {})
        else:
            arrays = protocol.unmask(groups, parameters)
        seconds = time.perf_counter() - started
        return Outcome(len(self.split(groups).y_train), {"seconds": seconds}, arrays)

    def evaluate(
        self,
        groups: TaskGroups,
        scaler: tuple[np.ndarray, np.ndarray],
        parameters: Arrays,
    ) -> Outcome:
        task = Task(chain.EVALUATE, groups, parameters)
        return self.privacy.run(task, lambda task: self._evaluate(task, scaler))

    def _evaluate(self, task: Task, scaler: tuple[np.ndarray, np.ndarray]) -> Outcome:
        started = time.perf_counter()
        data = self.split(task.groups)
        if not len(data.y_test):  # a fold of days this province has no rows on
            return Outcome(0, {"seconds": time.perf_counter() - started})
        trainer = trainer_for(task.groups.need(ModelTask).model)
        x = self._inputs(trainer, task.groups, "test", scaler)
        prediction = trainer.predict(task.parameters, x, task.groups)
        scoring = task.groups.dp_scoring  # local DP: the score its noise is for
        if scoring is not None and scoring.dp_score_clip:
            metrics = forecast.clipped_mse(prediction, data.y_test, scoring.dp_score_clip)
        else:
            rows = (data.y_test, *data.reference_test.values())
            kept = DERIVED.get(
                ("baseline", *data.reference_test),
                rows,
                lambda: forecast.baseline(data.y_test, data.reference_test),
            )
            metrics = forecast.scores(prediction, data.y_test, data.reference_test, kept)
        metrics["seconds"] = time.perf_counter() - started
        return Outcome(len(data.y_test), metrics)

    def analyse(
        self,
        groups: TaskGroups,
        scaler: tuple[np.ndarray, np.ndarray],
        parameters: Arrays,
    ) -> Outcome:
        """The end-of-run analysis on this province's rows (client/analysis.py)."""
        task = Task(chain.ANALYSE, groups, parameters)
        return self.privacy.run(task, lambda task: self._analyse(task, scaler))

    def _analyse(self, task: Task, scaler: tuple[np.ndarray, np.ndarray]) -> Outcome:
        started = time.perf_counter()
        data = self.split(task.groups)
        trainer = trainer_for(task.groups.need(ModelTask).model)
        x_train, x_test = (self._inputs(trainer, task.groups, p, scaler) for p in ("train", "test"))
        metrics, sums = analysis.analyse(
            trainer, data, x_train, x_test, task.parameters, task.groups
        )
        metrics["seconds"] = time.perf_counter() - started
        return Outcome(len(data.y_test), metrics, sums)

    def _inputs(
        self,
        trainer: Trainer,
        groups: TaskGroups,
        part: str,
        scaler: tuple[np.ndarray, np.ndarray],
    ) -> np.ndarray:
        """The split's `part` rows as `trainer` takes them: globally scaled (read-only, kept for
        the next task with the same settings and scaler), or raw for the models that want raw."""
        x = getattr(self.split(groups), f"x_{part}")
        if not trainer.scaled:
            return x
        key = (
            groups.need(DataSettings),
            groups.need(FoldSettings),
            scaler[0].tobytes(),
            scaler[1].tobytes(),
        )
        kept = self._scaled.get(part)
        if kept is None or kept[0] != key:
            scaled = preprocess.scale(x, *scaler)
            scaled.flags.writeable = False
            kept = self._scaled[part] = (key, scaled)
        return kept[1]
