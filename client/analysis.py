"""A province's part of the end-of-run analysis, on its own rows.

Contributions: the sums over the test rows from which the server scores any coalition's model
itself (common/analysis.py), so that no coalition's model, and no other province's update, ever
reaches this province. Importance: the global model's test MSE with one feature's column
shuffled, per feature and repeat. Personalisation: the global model fine-tuned on this
province's training rows, scored on its test rows. Only MSEs and those sums leave the province;
the fine-tuned model never does.
"""

from __future__ import annotations

import numpy as np

from client import histograms, trainers
from client.groups import TaskGroups
from client.trainers import Trainer
from common import analysis
from common.model_settings import MemberSeed, ModelTask
from common.models import linear
from common.preprocess import Split
from common.registry import model_spec
from common.settings import TaskContext
from common.tensors import Arrays
from common.vectors import flatten, unflatten


def mse(prediction: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean((prediction - truth) ** 2))


def directions(
    trainer: Trainer, model: Arrays, x: np.ndarray, groups: TaskGroups
) -> tuple[np.ndarray, np.ndarray]:
    """The global model's prediction on `x`, and Φ: how the prediction moves per unit of each
    parameter θ (common/analysis.py), for the models whose prediction is affine in θ."""
    codec = model_spec(groups.need(ModelTask).model).members
    if codec is not None:  # θ: each member's weight in the mean of the members
        members = codec.unpack(model, x.shape[1])
        each = np.column_stack([trainer.predict(codec.pack([m]), x, groups) for m in members])
        return each.mean(axis=1), each
    weights = flatten(model)
    probes = [model] + [unflatten(weights + unit, model) for unit in np.eye(len(weights))]
    if trainer.predict_candidates is not None:
        predictions = list(trainer.predict_candidates(probes, x, groups))
    else:
        predictions = [trainer.predict(probe, x, groups) for probe in probes]
    at = predictions[0]
    return at, np.column_stack([p - at for p in predictions[1:]])


def permuted_mses(
    trainer: Trainer,
    model: Arrays,
    x: np.ndarray,
    y: np.ndarray,
    features: list[str],
    repeats: int,
    groups: TaskGroups,
) -> dict[str, float]:
    """The model's MSE with each feature's column shuffled among the rows, `repeats` times."""
    seed = groups.need(analysis.AnalysisAsk).analysis_seed
    shuffled = x.copy()
    metrics = {}
    for j, feature in enumerate(features):
        for repeat in range(repeats):
            shuffled[:, j] = np.random.default_rng([seed, j, repeat]).permutation(x[:, j])
            prediction = trainer.predict(model, shuffled, groups)
            metrics[analysis.permuted_metric(feature, repeat)] = mse(prediction, y)
        shuffled[:, j] = x[:, j]
    return metrics


def fine_tune(
    trainer: Trainer, model: Arrays, x: np.ndarray, y: np.ndarray, groups: TaskGroups
) -> Arrays:
    """The global model fine-tuned on this province's training rows (common.analysis says how)."""
    spec = model_spec(groups.need(ModelTask).model)
    ask = groups.need(analysis.AnalysisAsk)
    if spec.own_epochs is not None:  # trained by local steps: fine-tuned by more of them
        passes = groups.need(spec.own_epochs).with_epochs(ask.personalise_epochs)
        return trainer.fit(x, y, model, groups.with_group(passes))
    if spec.closed_form:  # a fit that ignores where it starts: pulled towards the global one
        return pulled_fit(x, y, model, ask.personalise_pull)
    if spec.trees is not None:  # grown from histograms: boosting or growing continues here
        change = y - trainers.no_change(x, groups, scaled=False)
        return histograms.personalise(model, x, change, groups)
    if spec.members is not None:
        codec = spec.members
        own = trainer.fit(x, y, None, groups.with_group(MemberSeed(ask.analysis_seed)))
        return codec.pack([*codec.unpack(model, x.shape[1]), *codec.unpack(own, x.shape[1])])
    raise ValueError(f"this client does not know how to personalise model {spec.name!r}")


def pulled_fit(x: np.ndarray, y: np.ndarray, start: Arrays, pull: float) -> Arrays:
    """argmin ‖Xw − y‖²/n + λ‖w − w_global‖², in closed form: the province's own least squares
    at λ = 0, the global weights as λ grows. Features are globally scaled, so one λ suits all."""
    sums = linear.normal_equations(x, y)
    size = len(sums["xty"])
    lhs = sums["xtx"] / len(y) + pull * np.eye(size)
    rhs = sums["xty"] / len(y) + pull * np.append(start["coef"], start["intercept"])
    return linear.solve_normal_equations(lhs, rhs)


def analyse(
    trainer: Trainer,
    data: Split,
    x_train: np.ndarray,
    x_test: np.ndarray,
    model: Arrays,
    groups: TaskGroups,
) -> tuple[dict[str, float], Arrays]:
    """Every MSE the task asks for and, for contributions, the test rows' sums, on rows scaled
    (or not) as `trainer` expects them."""
    y = data.y_test
    prediction = trainer.predict(model, x_test, groups)
    metrics = {
        analysis.GLOBAL_MSE: mse(prediction, y),
        analysis.MEAN_MSE: mse(np.full(len(y), groups.need(TaskContext).target_mean), y),
    }
    sums: Arrays = {}
    ask = groups.need(analysis.AnalysisAsk)
    if ask.analysis_score_sums:
        at, phi = directions(trainer, model, x_test, groups)
        sums = analysis.score_sums(phi, y - at)
    if ask.importance_repeats:
        repeats = ask.importance_repeats
        metrics.update(permuted_mses(trainer, model, x_test, y, data.features, repeats, groups))
    if ask.personalise_epochs:
        personal = fine_tune(trainer, model, x_train, data.y_train, groups)
        metrics[analysis.PERSONAL_MSE] = mse(trainer.predict(personal, x_test, groups), y)
    return metrics, sums
