"""A province killed mid-tree (SIGKILL), over real processes: the ensemble goes on without it.

The province kills itself on receiving a chosen question of the third tree, so the loss lands
at the same step however the machine schedules the processes. The round timeout is an hour,
far beyond the test's own limit: a run that waited for the dead province's deadline fails by
the test's timeout, not by a timing assertion.
"""

import signal

import pytest

from common.launch import LocalFederation
from common.provinces import PROVINCES
from tests.test_federation import ROWS, SEED
from tests.test_gbdt_federation import centralised_mse

pytestmark = pytest.mark.integration
TREES, DEPTH = 10, 4
KILLED = "beijing"
# A dead province's round waits far beyond the test's own limit, so a run that waits for its
# deadline fails by the test's timeout; one whose stream ended has 20 s to come back, and never
# does.
KILL_TEST_WAITS = [
    "--poll-seconds",
    "2",
    "--round-timeout",
    "3600",
    "--join-timeout",
    "900",
    "--idle-timeout",
    "20",
]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("privacy", ["secagg", "none"])
def test_a_province_killed_mid_tree_leaves_the_rest_to_finish_the_ensemble(tmp_path, privacy):
    flags = ["--gbdt-trees", str(TREES), "--gbdt-max-depth", str(DEPTH), "--privacy", privacy]
    federation = LocalFederation(
        tmp_path,
        "gbdt",
        1,
        ROWS,
        SEED,
        provinces=tuple(p for p in PROVINCES if p != KILLED),
        server_args=[*flags, *KILL_TEST_WAITS, "--min-clients", str(len(PROVINCES))],
        insecure=True,
    )
    federation.start()
    # Dies on its twelfth level's question, which all ten trees' forty make tree 3's.
    federation.start_client(KILLED, "--vanish-at", "1:train:12", module="tests.vanishing_client")
    codes = federation.wait(timeout=840)
    assert codes == {
        name: -signal.SIGKILL if name == KILLED else 0 for name in ["server", *PROVINCES]
    }, codes

    results = federation.results()
    record = results["rounds"][0]
    survivors = sorted(set(PROVINCES) - {KILLED})
    assert record["clients"] == survivors
    assert [f["province"] for f in record["failures"]] == [KILLED]
    trees = record["trees"]
    [left] = trees["left"]
    assert left["province"] == KILLED and left["step"] == "level"
    assert left["tree"] >= 2 and 0 <= left["depth"] < DEPTH
    # Every tree is grown; one lost at a level below its root ends there, from the sums held.
    assert trees["count"] == TREES
    cut = trees.get("cut", [])
    assert cut == ([] if left["depth"] == 0 else [{"tree": left["tree"], "depth": left["depth"]}])
    assert results["final"]["mse"] is not None
    # Eight provinces' trees score the eight survivors' rows: near the whole federation's.
    assert results["final"]["mse"] < 1.5 * centralised_mse("gbdt", trees=TREES, max_depth=DEPTH)
    log = (tmp_path / "server.log").read_text()
    assert f"round 1/1: {len(survivors)} clients trained" in log
    assert f"dropped: {KILLED}" in log
