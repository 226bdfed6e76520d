"""The vanishing programs' --vanish-at: read and removed from the flags, refused when
malformed, and fatal the N-th time its step of its round is reached, not before."""

import signal
import subprocess
import sys

import pytest

from tests.vanishing import Vanishing

REACH = """
import sys
from tests.vanishing import Vanishing
vanishing = Vanishing(2, "train", 3)
for server_round, step in [(1, "train"), (2, "evaluate"), (2, "train"), (2, "train")]:
    vanishing.reached(server_round, step)
print(vanishing.seen, flush=True)
vanishing.reached(2, "train")
print("still here", flush=True)
"""


def test_the_flag_is_taken_out_of_the_programs_own_flags():
    argv = ["--rounds", "3", "--vanish-at", "4:train:5", "--poll-seconds", "2"]
    vanishing = Vanishing.take(argv, "a task kind")
    assert (vanishing.round, vanishing.step, vanishing.nth) == (4, "train", 5)
    assert argv == ["--rounds", "3", "--poll-seconds", "2"]


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--rounds", "3"], "--vanish-at ROUND:STEP:N is required"),
        (["--vanish-at"], "--vanish-at ROUND:STEP:N is required"),
        (["--vanish-at", "4:train"], "takes ROUND:STEP:N, not '4:train'"),
        (["--vanish-at", "four:train:1"], "takes ROUND:STEP:N"),
        (["--vanish-at", "4:train:0"], "N 1 or more"),
    ],
)
def test_a_malformed_flag_is_refused_with_the_form_it_takes(argv, why):
    with pytest.raises(SystemExit, match=why):
        Vanishing.take(argv, "a task kind")


@pytest.mark.integration  # a fresh interpreter, to be killed
def test_the_program_dies_the_nth_time_it_reaches_the_step_of_the_round():
    done = subprocess.run([sys.executable, "-c", REACH], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout == "2\n"  # the other round's and the other step's were not counted
