"""The command line of `python -m server.compose`: a members file onto `server.compose.render`,
or with `--overlay`, onto one of the overrides of `server.compose_overlays`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.members import MembersError, load
from server.compose import render
from server.compose_overlays import OVERLAYS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.compose",
        description="Write a compose file with one client service per member of the federation "
        "to standard output, or one of its overrides (--overlay).",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--members",
        type=Path,
        help="the federation's members file, as the server's --members FILE (CSV or TOML), "
        "relative to the folder the compose file will be in (the project's); default: the "
        "paper's nine provinces, which is the committed docker-compose.yml",
    )
    parser.add_argument(
        "--overlay",
        choices=sorted(OVERLAYS),
        help="write this override of the compose file for the same members instead: data "
        "mounts each member's own data file into its container only, he deals a threshold "
        "Paillier key and gives each member only its own share; default: the paper's nine's are "
        "the committed docker/compose.data.yml and docker/compose.he.yml",
    )
    args = parser.parse_args(argv)
    write = render if args.overlay is None else OVERLAYS[args.overlay]
    try:
        members = load(args.members)
        text = write(members, None if args.members is None else args.members.as_posix())
    except MembersError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0
