"""Histogram trees under secure aggregation, as a deviating server would try them: many sums
under one key agreement, each exchange's masks fresh and bound to the question asked.

The server side is the real strategy (SecAggTrees around HistogramTrees); the nine provinces
are their real protection chains (ClientPrivacy) in this process, each answering a question
with a fixed vector, so that the test knows every province's input and the true sum.
"""

import numpy as np
import pytest

from client.chain import TRAIN, Outcome, Task
from client.groups import TaskGroups
from client.privacy import ClientPrivacy
from common.models.histgrow import TreeSettings
from common.provinces import PROVINCES
from common.secagg import SecAggError
from proto.fedstock.v1 import federation_pb2 as pb
from server.privacy.secagg_trees import SecAggTrees
from server.strategies.trees import HistogramTrees
from server.strategy import ClientResult

SHAPES = {"grad": (3, 4)}
VICTIM = sorted(PROVINCES)[0]


def answer_of(province, exchange):
    """What each province answers to exchange `exchange`: known here, hidden from the server."""
    rng = np.random.default_rng([PROVINCES.index(province), exchange])
    return {"grad": rng.normal(0, 100, size=SHAPES["grad"])}


class Federation:
    """The real strategy and nine real client chains; the server relays what the test lets it."""

    def __init__(self) -> None:
        self.clients = {p: ClientPrivacy() for p in PROVINCES}
        self.strategy = SecAggTrees(HistogramTrees({"model": "gbdt"}, TreeSettings()))
        self.strategy.bind_phases(self._phase)
        self.first = self.strategy.configure_fit(1, None, list(PROVINCES))

    def _phase(self, server_round, kind, plan, accept):
        steps = {
            pb.TASK_KIND_SECAGG_KEYS: lambda c, i: c.secagg.keys(TaskGroups.parse(i.config)),
            pb.TASK_KIND_SECAGG_SHARES: lambda c, i: c.secagg.shares(
                TaskGroups.parse(i.config), i.parameters
            ),
        }
        results = [
            accept(ClientResult(i.province, 100, {}, steps[kind](self.clients[i.province], i)))
            for i in plan
        ]
        return results, []

    def answer(self, instruction, exchange):
        """The province's chain on the task: its answer leaves masked."""
        client = self.clients[instruction.province]
        outcome = Outcome(100, {}, answer_of(instruction.province, exchange))
        task = Task(TRAIN, TaskGroups.parse(instruction.config), instruction.parameters)
        return ClientResult(
            instruction.province, 100, {}, client.run(task, lambda _: outcome).arrays
        )

    def exchange(self, number, plan=None):
        """Exchange `number` (the first one's plan, or a fresh question) answered by everyone;
        what the server sums from the masked answers."""
        plan = plan or self.question()
        results = [self.answer(i, number) for i in plan]
        for r in results:
            self.strategy.check(r.arrays, SHAPES)
        return self.strategy.total(results, SHAPES), plan

    def question(self, arrays=None, cohort=PROVINCES):
        config = {"model": "gbdt", "round": 1, "tree_step": "level"}
        asked = {"asked": np.array([0], dtype=np.int32)} if arrays is None else arrays
        return self.strategy.instructions(config, asked, sorted(cohort))


def true_sum(exchange, provinces=PROVINCES):
    return sum(answer_of(p, exchange)["grad"] for p in provinces)


def test_after_a_province_leaves_the_next_exchanges_sum_the_rest_exactly():
    federation = Federation()
    federation.exchange(1, federation.first)
    rest = sorted(set(PROVINCES) - {VICTIM})
    # Exchange 2 goes out to all; the victim never answers: the rest's sum is noise.
    plan = federation.question()
    lost = [federation.answer(i, 2) for i in plan if i.province != VICTIM]
    assert not np.allclose(federation.strategy.total(lost, SHAPES)["grad"], true_sum(2, rest), 1)
    # Later exchanges name the victim as left: the rest mask among themselves.
    for number in (3, 4):
        plan = federation.question(cohort=rest)
        assert {i.config["secagg_left"] for i in plan} == {"1"}  # the victim's seat
        total, _ = federation.exchange(number, plan)
        np.testing.assert_allclose(total["grad"], true_sum(number, rest), atol=9 * 2.0**-24)
    # A question that forgets the victim left is refused by the rest.
    plan = federation.question()
    with pytest.raises(SecAggError, match="forget the earlier ones"):
        federation.answer(plan[1], 5)


def test_every_question_of_a_round_sums_exactly_under_one_key_agreement():
    federation = Federation()
    for number in (1, 2, 3):
        total, _ = federation.exchange(number, federation.first if number == 1 else None)
        # Fixed point: each province's input rounded to 2⁻²⁴.
        np.testing.assert_allclose(total["grad"], true_sum(number), atol=len(PROVINCES) * 2.0**-24)
    masked = federation.answer(federation.question()[0], 4).arrays["grad"]
    assert masked.dtype == np.int64 and not np.allclose(masked, answer_of(VICTIM, 4)["grad"])


def test_a_question_asked_differently_of_one_province_sums_to_noise():
    federation = Federation()
    federation.exchange(1, federation.first)
    plan = federation.question()
    plan[0] = type(plan[0])(VICTIM, plan[0].config, {"asked": np.array([1], dtype=np.int32)})
    total, _ = federation.exchange(2, plan)
    # The victim's masks are bound to another question: nothing of anyone's input is clear.
    assert not np.allclose(total["grad"], true_sum(2), atol=1.0)


@pytest.mark.parametrize(
    "change",
    [
        {"secagg_members": ",".join(sorted(PROVINCES)[:5])},  # a smaller announced set
        {"secagg_threshold": 2},  # a lower threshold
        {"secagg_session": "another"},
    ],
    ids=["members", "threshold", "session"],
)
def test_an_exchange_announcing_another_set_or_threshold_is_refused(change):
    federation = Federation()
    federation.exchange(1, federation.first)
    told = federation.question()[0]
    tampered = type(told)(VICTIM, {**told.config, **change}, told.parameters)
    with pytest.raises(SecAggError, match="changed the round's announcement"):
        federation.answer(tampered, 2)


def test_a_replayed_exchange_and_a_request_to_unmask_are_refused():
    federation = Federation()
    federation.exchange(1, federation.first)
    _, plan = federation.exchange(2)
    # A second input under exchange 2 would share its mask with the first: refused.
    with pytest.raises(SecAggError, match="each exchange number masks one input"):
        federation.answer(plan[0], 2)
    config = {**plan[0].config, "secagg_survivors": "1,2,3,4,5,6,7,8,9", "secagg_dropped": ""}
    protocol = federation.clients[VICTIM].secagg
    protocol.unmask(
        TaskGroups.parse({**config, "secagg_step": "confirm"})
    )  # a signature, no secret
    # No share of a province that has answered exchanges is ever revealed.
    with pytest.raises(SecAggError, match="refusing to unmask after 'exchange'"):
        protocol.unmask(TaskGroups.parse({**config, "secagg_step": "reveal"}))


def test_a_first_exchange_with_a_short_relay_is_refused():
    federation = Federation()
    (told, *_) = federation.first
    relay = dict(told.parameters)
    relay["secagg_senders"] = relay["secagg_senders"][:2]
    relay["secagg_shares"] = relay["secagg_shares"][:2]
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        federation.answer(type(told)(VICTIM, told.config, relay), 1)
