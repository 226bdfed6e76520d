"""`python -m server.localrun`: the server and nine province clients as processes here.

The launcher lives in common/launch.py and the command line in server/localrun_cli.py; code
written against this module keeps working.
"""

from __future__ import annotations

import sys

from common.launch import LocalFederation, free_port

__all__ = ["LocalFederation", "free_port"]

if __name__ == "__main__":
    from server.localrun_cli import main

    sys.exit(main())
