"""An RBF support-vector regressor the federation can average, via random Fourier features.

An RBF SVR's support vectors are rows of its training data: they cannot be averaged and sending
them leaks rows. Random Fourier features (Rahimi and Recht, 2007) map a row to
z(x) = sqrt(2/D) cos(W x + b), with W ~ N(0, 2γ I) and b ~ U(0, 2π), so that z(x)·z(x') ≈
exp(−γ‖x − x'‖²). W and b come from a seed, never from data: every client maps its rows into the
same space and nothing about them leaks. In that space the SVR is linear, and its weights
average like linear regression's.

Training minimises scikit-learn's SVR objective divided by C·N (N: the federation's rows),
  (1/N) Σ max(0, |w·z + c − t| − ε) + ‖w‖² / (2 C N),
by mini-batch subgradient steps preconditioned with the inverse of the client's own mean Gram
matrix of [z, 1]. Random features are badly conditioned (the Gram's eigenvalues span ten orders
of magnitude): without a preconditioner the weights that only rare, extreme rows excite barely
move in any number of rounds. The preconditioner is local, so only weights travel, and its
ridge keeps a client from swinging the directions its own rows hardly excite.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from common.models.checks import check_arrays
from common.tensors import Arrays

BATCH_ROWS = 256  # rows per subgradient step
BLOCK_ROWS = 8192  # rows mapped at once when only sums or predictions are needed
# Added to the Gram's eigenvalues. On a quarter of the 2.7M-row market, 1e-6 lets a province
# overshoot in directions only others excite (FedAvg stalls at 4x the MSE); 1e-3 learns slower.
RIDGE = 1e-4
# Training holds three (F+1)² matrices and takes an O(F³) eigendecomposition: beyond this many
# features a client needs over 2 GiB for them alone (memory is checked before the first round;
# the method is not O(F) in memory).
MAX_COMPONENTS = 10_000
GIB = 1 << 30


def scale_gamma(n_features: int, variance: float) -> float:
    """scikit-learn's gamma='scale': 1 / (n_features · Var(X)), Var over every entry of X."""
    return 1.0 / (n_features * variance) if variance > 0 else 1.0


@dataclass(frozen=True)
class FourierFeatures:
    weights: np.ndarray  # W, (n_features, n_components)
    offsets: np.ndarray  # b, (n_components,)

    @classmethod
    def draw(cls, n_features: int, n_components: int, gamma: float, seed: int) -> FourierFeatures:
        """The same map on every machine for the same arguments: it depends on the seed alone."""
        rng = np.random.default_rng(seed)
        weights = rng.normal(scale=np.sqrt(2.0 * gamma), size=(n_features, n_components))
        return cls(weights, rng.uniform(0.0, 2.0 * np.pi, size=n_components))

    @property
    def n_components(self) -> int:
        return len(self.offsets)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(2.0 / self.n_components) * np.cos(x @ self.weights + self.offsets)

    def blocks(self, x: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
        for start in range(0, len(x), BLOCK_ROWS):
            rows = slice(start, start + BLOCK_ROWS)
            yield rows, self.transform(x[rows])


def zero_weights(n_components: int) -> Arrays:
    return {"coef": np.zeros(n_components), "intercept": np.zeros(())}


def check_weights(arrays: Arrays, n_components: int) -> None:
    check_arrays(arrays, {"coef": (n_components,), "intercept": ()})


def check_components(n_components: int) -> None:
    """ValueError unless a client can hold the (F+1)² matrices training needs in memory."""
    if n_components > MAX_COMPONENTS:
        need, most = matrix_bytes(n_components) / GIB, matrix_bytes(MAX_COMPONENTS) / GIB
        raise ValueError(
            f"--svm-features {n_components} needs {need:,.0f} GiB on every client for the Gram "
            "matrix of the features, its eigenvectors and the preconditioner; use at most "
            f"{MAX_COMPONENTS} ({most:.1f} GiB)"
        )


def matrix_bytes(n_components: int) -> int:
    """Memory of the three (F+1)² float64 matrices a client holds while it preconditions."""
    return 3 * 8 * (n_components + 1) ** 2


def gram(features: FourierFeatures, x: np.ndarray) -> np.ndarray:
    """Σ [z, 1][z, 1]ᵀ over the rows."""
    check_components(features.n_components)
    size = features.n_components + 1
    total = np.zeros((size, size))
    for _, z in features.blocks(x):
        design = np.column_stack([z, np.ones(len(z))])
        total += design.T @ design
    return total


def preconditioner(gram_sum: np.ndarray, rows: int) -> np.ndarray:
    """(Gram / rows + ridge·I)⁻¹; finite for any symmetric input (negative eigenvalues count 0)."""
    values, vectors = np.linalg.eigh(gram_sum / rows)
    return (vectors / (np.clip(values, 0.0, None) + RIDGE)) @ vectors.T


def train(
    features: FourierFeatures,
    x: np.ndarray,
    t: np.ndarray,
    start: Arrays,
    precondition: np.ndarray,
    *,
    c: float,
    epsilon: float,
    rows: int,
    learning_rate: float,
    epochs: int,
    rng: np.random.Generator,
) -> Arrays:
    """Epochs of preconditioned mini-batch subgradient steps on the SVR objective from `start`."""
    w = np.append(start["coef"], start["intercept"])
    alpha = 1.0 / (c * rows)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for begin in range(0, len(x), BATCH_ROWS):
            pick = order[begin : begin + BATCH_ROWS]
            z = features.transform(x[pick])
            residual = z @ w[:-1] + w[-1] - t[pick]
            outside = np.sign(residual) * (np.abs(residual) > epsilon)
            step = np.append(z.T @ outside, outside.sum()) / len(pick)
            step[:-1] += alpha * w[:-1]
            w -= learning_rate * (precondition @ step)
    return {"coef": w[:-1].copy(), "intercept": np.asarray(w[-1])}


def predict(features: FourierFeatures, weights: Arrays, x: np.ndarray) -> np.ndarray:
    out = np.empty(len(x))
    for rows, z in features.blocks(x):
        out[rows] = z @ weights["coef"] + weights["intercept"]
    return out
