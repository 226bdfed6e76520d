"""The seed paper's literal SVM, kept as a comparison: exact RBF SVRs fitted on client subsamples.

NOT PRIVATE. An RBF SVR is its support vectors, which are rows of the client's (scaled) training
data; they travel to the server and, in the global model, to every other client. The global
model is the ensemble of the clients' SVRs and predicts the mean of their predictions. The
private federated SVM is `common.models.rff`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.models.checks import UpdateError
from common.models.ensemble import Member, MemberCodec, check_vector
from common.models.rff import BLOCK_ROWS

# The seed paper's Table 1 (gamma is passed in: 'scale' is resolved from global statistics).
TABLE_1 = {
    "kernel": "rbf",
    "degree": 3,
    "coef0": 0.0,
    "C": 1.0,
    "tol": 1e-3,
    "epsilon": 0.1,
    "shrinking": True,
    "cache_size": 200,
    "max_iter": -1,
}
FIELDS = ("support_vectors", "dual_coef", "intercept", "gamma")


def check_svr(member: Member, n_features: int, where: str) -> None:
    vectors = member["support_vectors"]
    if vectors.dtype != np.float64 or vectors.ndim != 2 or vectors.shape[1] != n_features:
        raise UpdateError(
            f"{where}: support vectors must be float64 of shape (n, {n_features}), "
            f"got {vectors.dtype} {vectors.shape}"
        )
    check_vector(member, "dual_coef", np.dtype("<f8"), len(vectors), where)
    for field in ("intercept", "gamma"):
        if member[field].dtype != np.float64 or member[field].shape != ():
            raise UpdateError(f"{where}: {field!r} must be a float64 scalar")
    if not all(np.isfinite(member[field]).all() for field in FIELDS):
        raise UpdateError(f"{where} holds NaN or infinite values")
    if member["gamma"] <= 0:
        raise UpdateError(f"{where}: gamma must be positive")


SVRS = MemberCodec("svr", FIELDS, check_svr)


def fit_svr(
    x: np.ndarray,
    t: np.ndarray,
    *,
    gamma: float,
    subsample: int,
    rng: np.random.Generator,
    **params: object,
) -> Member:
    """Table 1's SVR (with `params` overriding it) on at most `subsample` random rows."""
    from sklearn.svm import SVR  # imported by the fit alone: scikit-learn is slow to import

    rows = rng.choice(len(x), size=min(subsample, len(x)), replace=False)
    model = SVR(**{**TABLE_1, **params, "gamma": gamma}).fit(x[rows], t[rows])
    return {
        "support_vectors": np.asarray(model.support_vectors_, dtype=np.float64),
        "dual_coef": np.asarray(model.dual_coef_[0], dtype=np.float64),
        "intercept": np.asarray(model.intercept_[0], dtype=np.float64),
        "gamma": np.asarray(gamma, dtype=np.float64),
    }


def decision_function(member: Member, x: np.ndarray) -> np.ndarray:
    """Σ αᵢ exp(−γ‖x − svᵢ‖²) + b, as libsvm computes it, in blocks of rows."""
    vectors, gamma = member["support_vectors"], float(member["gamma"])
    norms = (vectors**2).sum(axis=1)
    out = np.empty(len(x))
    for start in range(0, len(x), BLOCK_ROWS):
        block = x[start : start + BLOCK_ROWS]
        distances = (block**2).sum(axis=1)[:, None] + norms[None, :] - 2.0 * block @ vectors.T
        out[start : start + len(block)] = (
            np.exp(-gamma * np.clip(distances, 0.0, None)) @ (member["dual_coef"])
        )
    return out + member["intercept"]


def predict_mean(members: Sequence[Member], x: np.ndarray) -> np.ndarray:
    return np.mean([decision_function(member, x) for member in members], axis=0)
