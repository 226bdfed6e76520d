"""The pure helpers the benchmarks' figures rest on: reading a peak RSS from /proc and the
median round; a wrong parse would print a wrong figure without failing the benchmark."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.bench_fold import Sampler, high_water_mib, median_interval, vmhwm_mib

STATUS = "Name:\tpython\nVmPeak:\t  900000 kB\nVmHWM:\t  262144 kB\nVmRSS:\t  131072 kB\n"


def test_vmhwm_is_read_from_its_own_line_in_mib() -> None:
    assert vmhwm_mib(STATUS) == 256.0


def test_a_status_without_vmhwm_is_refused() -> None:
    # A zombie's status (its memory gone) has no Vm lines: no figure, rather than a zero.
    with pytest.raises(ValueError, match="no VmHWM"):
        vmhwm_mib("Name:\tpython\nState:\tZ (zombie)\n")


def test_a_vmhwm_in_another_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="not in kB"):
        vmhwm_mib("VmHWM:\t  256 MB\n")


def test_this_process_has_a_peak_at_least_its_current_rss() -> None:
    status = Path("/proc/self/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    assert high_water_mib() >= rss / 1024 > 0


def test_median_interval_spans_round_end_to_round_end() -> None:
    # Ends of four rounds: intervals 1, 3 and 2 s (rounds 2..4); the first round is not one.
    assert median_interval([10.0, 11.0, 14.0, 16.0]) == 2.0


def test_one_round_end_has_no_interval() -> None:
    with pytest.raises(ValueError, match="at least two"):
        median_interval([3.0])


def test_the_sampler_reads_the_highest_resident_set_within_a_window_and_none_outside_it():
    sampler = Sampler()
    sampler.stop()
    sampler.samples[:] = [(1.0, 100.0), (2.0, 250.0), (3.0, 180.0), (4.0, 300.0)]
    assert sampler.highest(1.0, 4.0) == 250.0  # the end is left out
    assert sampler.highest(2.5, 3.5) == 180.0
    assert math.isnan(sampler.highest(5.0, 6.0))
