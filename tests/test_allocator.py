"""The server's allocator policy: a freed buffer of an update's size leaves the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from common.allocator import give_back_large_buffers

# In a fresh process (this one's heaps are whatever earlier tests left): a 16 MiB buffer freed
# once (glibc then raises its mapping threshold to 16 MiB), then one more made and freed; the
# resident MiB the second one leaves behind.
LEFT_BEHIND = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from common.allocator import give_back_large_buffers

    def resident() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    if sys.argv[1] == "given-back":
        assert give_back_large_buffers()
    np.ones(16 << 17).sum()  # 16 MiB made, touched and freed
    before = resident()
    buffer = np.ones(16 << 17)
    del buffer
    print(resident() - before)
    """
)


def left_behind(policy: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", LEFT_BEHIND, policy], capture_output=True, text=True, check=True
    )
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_update_sized_buffer_leaves_the_process_where_glibc_would_keep_it():
    assert left_behind("glibc") > 12  # the heap keeps it: what the policy is for
    assert left_behind("given-back") < 4


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="positive"):
        give_back_large_buffers(map_above=0)
