"""The command line of `python -m server.compose`: a members file onto `server.compose.render`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.members import MembersError, load
from server.compose import render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.compose",
        description="Write a compose file with one client service per member of the federation "
        "to standard output.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--members",
        type=Path,
        help="the federation's members file, as the server's --members FILE (CSV or TOML), "
        "relative to the folder the compose file will be in (the project's); default: the "
        "paper's nine provinces, which is the committed docker-compose.yml",
    )
    args = parser.parse_args(argv)
    try:
        members = load(args.members)
        text = render(members, None if args.members is None else args.members.as_posix())
    except MembersError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0
