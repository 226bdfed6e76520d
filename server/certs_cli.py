"""The command line of `python -m server.certs`: flags onto `server.certs.write_federation`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.members import MembersError
from common.members import load as load_members
from server.certs import DEFAULT_SERVER_NAMES, write_federation


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m server.certs",
        description="Create a CA, a server certificate and one client certificate per province.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("certs"), help="folder to write into")
    parser.add_argument(
        "--server-name",
        action="append",
        dest="server_names",
        help="a name or address the server is reached by (repeatable); default: "
        + ", ".join(DEFAULT_SERVER_NAMES),
    )
    parser.add_argument(
        "--members",
        type=Path,
        metavar="FILE",
        help="issue client certificates for the members this file names (as the server's "
        "--members); default: the paper's nine provinces",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing CA")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        members = load_members(args.members)
    except MembersError as error:
        parser.error(str(error))
    if (args.out / "ca.pem").exists() and not args.force:
        print(f"{args.out}/ca.pem exists; keeping it (use --force to replace it)")
        return 0
    names = tuple(args.server_names or DEFAULT_SERVER_NAMES)
    write_federation(args.out, names, members)
    print(
        f"wrote a CA, a server certificate for {', '.join(names)} and "
        f"{len(members)} client certificates to {args.out}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
