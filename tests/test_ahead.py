"""The kernels built ahead of time (`python -m common.models.ahead`) give numba's numbers to the
last bit, spare a process numba altogether, and are never used for arguments of other types or
for kernel code other than the code they were built from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.models.compiled import Array, exported_name

ROOT = Path(__file__).resolve().parent.parent

CHECK = r"""
import os
import sys
import numpy as np
from common.models import histtree
from common.models.compiled import _built, _numba
from common.models.forest import _descend, leaves, tree_arrays
from sklearn.tree import DecisionTreeRegressor

assert _built() is not None, "the built module is not on the path"
rng = np.random.default_rng(7)
rows, features, width, nodes = 5000, 6, 33, 8
bins = rng.integers(0, width, (features, rows)).astype(np.uint16)
bins.flags.writeable = False  # a province's binned rows are read-only
asked = np.sort(rng.choice(rows, 3000, replace=False))
slot = rng.integers(0, nodes, len(asked))
grad, hess = rng.normal(size=len(asked)), rng.random(len(asked))
rule = histtree.Rule(1.0, 0.5, 0.3)
allowed = rng.random((nodes, features)) < 0.8
edge_counts = rng.integers(1, width, features)
x32 = rng.normal(size=(rows, features)).astype(np.float32)

ahead = {
    "weighted": histtree.histograms(bins, asked, slot, grad, hess, nodes, width),
    "counted": histtree.histograms(bins, asked, slot, grad, None, nodes, width),
}
summed = ahead["weighted"]
splits = histtree.best_splits(summed["grad"], summed["hess"], rule, allowed, edge_counts)
parent = rng.integers(0, nodes, 5)
small_left = rng.random(5) < 0.5
used = rng.random((features, width)) < 0.9
children = histtree.next_level(
    summed["grad"], summed["hess"], summed["grad"][:5] * 0.4, summed["hess"][:5] * 0.4,
    parent, small_left, used,
)
grown = DecisionTreeRegressor(max_depth=6, random_state=0).fit(x32, rng.normal(size=rows))
member = tree_arrays(grown)
ahead_leaves = leaves(member, x32)
assert "numba" not in sys.modules, "a built kernel started numba"

# numba's own compilation of the same kernels, on the same inputs
reference = {}
for name, hess_in, unit in (("weighted", hess, False), ("counted", np.zeros(0), True)):
    g, h = np.zeros((nodes, features, width)), np.zeros((nodes, features, width))
    kernel = _numba(histtree._add_rows)
    kernel(bins, asked.astype(np.intp), slot.astype(np.intp), grad, hess_in, unit, g, h)
    reference[name] = (g, h)
for name, sums in ahead.items():
    assert np.array_equal(sums["grad"], reference[name][0]), name
    assert np.array_equal(sums["hess"], reference[name][1]), name

# best_splits and next_level: numba's kernels are swapped in for the wrappers' second call
import common.models.compiled as compiled_module
compiled_module.compiled.cache_clear()
compiled_module._built.cache_clear()
os.environ["FEDSTOCK_COMPILED_AHEAD"] = "0"
again = histtree.best_splits(summed["grad"], summed["hess"], rule, allowed, edge_counts)
for field in ("feature", "bin", "gain", "left_grad", "left_hess"):
    assert np.array_equal(getattr(splits, field), getattr(again, field)), field
children_again = histtree.next_level(
    summed["grad"], summed["hess"], summed["grad"][:5] * 0.4, summed["hess"][:5] * 0.4,
    parent, small_left, used,
)
assert all(np.array_equal(a, b) for a, b in zip(children, children_again))

# the forest's descent, built against numba's, on the grown tree
node = np.zeros(rows, dtype=np.intp)
tree_in = [member[k] for k in ("children_left", "children_right", "feature", "threshold")]
_numba(_descend)(*tree_in, x32, node)
assert np.array_equal(ahead_leaves, node)
assert np.array_equal(ahead_leaves, grown.apply(x32))

# arguments not of the declared types go to numba, not to the built code
narrow = bins.astype(np.uint8)
strided = np.repeat(bins, 2, axis=1)[:, ::2]
for other in (narrow, strided):
    sums = histtree.histograms(other, asked, slot, grad, hess, nodes, width)
    assert np.array_equal(sums["grad"], ahead["weighted"]["grad"])
print("ok")
"""


@pytest.fixture(scope="module")
def built_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ahead")
    subprocess.run(
        [sys.executable, "-m", "common.models.ahead", "--output-dir", str(folder)],
        cwd=ROOT,
        check=True,
        timeout=600,
    )
    return folder


def test_built_kernels_give_numbas_numbers_without_numba(built_module: Path) -> None:
    path = os.pathsep.join([str(built_module), str(ROOT)])
    env = {**os.environ, "PYTHONPATH": path, "FEDSTOCK_COMPILED_AHEAD": "1"}
    done = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_kernels_name_in_the_module_follows_its_code_and_types() -> None:
    def _step(out: object) -> None:
        out[0] += 1.0  # type: ignore[index]

    first = exported_name(_step, (Array("float64", 1, written=True),))

    def _step(out: object) -> None:  # the same name, other code
        out[0] += 2.0  # type: ignore[index]

    assert exported_name(_step, (Array("float64", 1, written=True),)) != first
    assert exported_name(_step, (Array("float32", 1, written=True),)) != exported_name(
        _step, (Array("float64", 1, written=True),)
    )
