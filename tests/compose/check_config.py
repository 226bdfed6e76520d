"""Check the engine's reading of generated compose files (standard library only).

    docker compose -f compose.yml -f compose.he.yml config --format json > config.json
    python3 tests/compose/check_config.py config.json --members members.csv --services he-keys

Passes (exit 0) when the services are the members', certs and server and those named by
--services, and every member's container mounts only what is its own: its certificate,
receipts and HE share volumes, its own data file, and the members file. Otherwise prints every
problem found and exits 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys


def problems(services: dict, members: list[str], extra: list[str]) -> list[str]:
    found: list[str] = []
    expected = {"certs", "server", *extra, *members}
    if set(services) != expected:
        found.append(f"services {sorted(services)}, expected {sorted(expected)}")
    for name in members:
        own = {f"certs-{name}", f"receipts-{name}", f"he-{name}", f"{name}.parquet", "members.csv"}
        for volume in services.get(name, {}).get("volumes", []):
            source = str(volume.get("source", "")).rsplit("/", 1)[-1]
            if source not in own:
                found.append(f"{name} mounts {volume.get('source')!r}, not its own")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("config", help="`docker compose config --format json` output")
    parser.add_argument("--members", required=True, help="the members CSV the files came from")
    parser.add_argument("--services", nargs="*", default=[], help="the overrides' own services")
    args = parser.parse_args(argv)
    with open(args.members, encoding="utf-8") as handle:
        members = [row["name"] for row in csv.DictReader(handle)]
    with open(args.config, encoding="utf-8") as handle:
        services = json.load(handle)["services"]
    found = problems(services, members, args.services)
    for problem in found:
        print(f"FAIL {args.config}: {problem}")
    if found:
        return 1
    print(f"ok: {len(services)} services, each of {len(members)} members mounts only its own")
    return 0


if __name__ == "__main__":
    sys.exit(main())
