"""`python -m common.models.ahead`: build the trees' kernels into the `fedstock_kernels` module.

`make`'s set-up runs it into the environment's own site-packages, so each process of a
federation loads the kernels as a plain extension module instead of starting numba
(common/models/compiled.py says why, and how a stale build is never used). It needs a C compiler
and Python's headers; the code is built for the architecture's generic CPU, so the module also
runs on other machines of the same architecture with the same Python and numpy. Without the
module, numba compiles the kernels as before.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from common.models import forest, histtree  # noqa: F401  (their kernels declare themselves)
from common.models.compiled import DECLARED, MODULE, exported_name, signature


def build(folder: Path) -> Path:
    """Every declared kernel compiled into `folder`/fedstock_kernels*.so; that file's path."""
    from numba.core.errors import NumbaPendingDeprecationWarning

    with warnings.catch_warnings():
        # numba marks its ahead-of-time compiler as pending removal (numba is pinned)
        warnings.simplefilter("ignore", NumbaPendingDeprecationWarning)
        from numba.pycc import CC

        module = CC(MODULE)
        module.output_dir = str(folder)
        module.verbose = False
        for function in DECLARED:
            arguments = function.__kernel_arguments__  # type: ignore[attr-defined]
            module.export(exported_name(function, arguments), signature(arguments))(function)
        folder.mkdir(parents=True, exist_ok=True)
        module.compile()
    return folder / module.output_file


if __name__ == "__main__":  # the command line is common/models/ahead_cli.py
    from common.models.ahead_cli import main

    main()
