"""A client whose local work raises says so, and the server closes the round without waiting.

The server runs in this process with a long deadline; the clients are real processes. One
province is sent a task its client cannot do, or one it must refuse on arrival: it must report
the failure with the reason, and the round must close on that report, not at the deadline.
"""

from collections.abc import Callable

import pytest

from common.models import rff
from server.models import build_strategy, defaults
from server.strategy import ExactLinear, Instruction
from tests.test_bad_input import run_cli
from tests.test_fail_closed import PROVINCES, run_in_process

pytestmark = pytest.mark.integration

DEADLINE = 3600.0  # far beyond the test's own timeout: the round must close on the report


class SpoilsFujiansTraining(ExactLinear):
    """Exact least squares whose training tasks to fujian, in every round, carry `spoiled`'s
    settings over the right ones."""

    def __init__(self, spoiled: Callable[[int], dict]) -> None:
        super().__init__({"model": "lr-exact"})
        self.spoiled = spoiled

    def configure_fit(self, server_round, parameters, provinces):
        return [
            Instruction(i.province, {**i.config, **self.spoiled(server_round)}, i.parameters)
            if i.province == "fujian"
            else i
            for i in super().configure_fit(server_round, parameters, provinces)
        ]


@pytest.mark.parametrize(
    ("spoiled", "reasons"),
    [  # a model no client knows: its work raises; the round as text: refused on arrival
        (lambda _: {"model": "no-such-model"}, ["the client failed", "no-such-model"]),
        (lambda number: {"round": str(number)}, ["task setting 'round' must be int, got '"]),
    ],
    ids=["work-raises", "malformed-task"],
)
def test_a_client_that_fails_a_task_reports_why_and_the_round_closes_at_once(
    tmp_path, spoiled, reasons
):
    run = run_in_process(tmp_path, SpoilsFujiansTraining(spoiled), 1, DEADLINE)
    assert run.status == 0 and run.codes == {p: 0 for p in PROVINCES}, run
    records = run.results["rounds"]
    assert [r["clients"] for r in records] == [["hubei"], ["hubei"]]
    for record in records:
        [failure] = record["failures"]
        assert failure["province"] == "fujian"
        assert all(reason in failure["reason"] for reason in reasons), failure
        assert set(record["per_client"]) == set(PROVINCES)  # fujian goes on, and evaluates


def test_model_settings_that_cannot_fit_in_memory_are_refused_before_any_round(tmp_path):
    flags = ["--model", "svm", "--svm-features", "1250000", "--insecure"]
    done = run_cli("-m", "server", *flags, "--results", str(tmp_path / "r.json"))
    assert done.returncode == 2 and "GiB" in done.stderr, done.stderr[-2000:]
    with pytest.raises(ValueError, match="GiB"):
        build_strategy("svm", {**defaults(), "svm_features": 1_250_000})
    with pytest.raises(ValueError, match="GiB"):
        rff.check_components(rff.MAX_COMPONENTS + 1)
    rff.check_components(int(defaults()["svm_features"]))
