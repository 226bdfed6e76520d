"""Check a server results file from the compose test (standard library only).

    python3 tests/compose/check_results.py RESULTS.json --clients 9 --rounds 2

Passes (exit 0) when the file lists the expected number of rounds, each with exactly the
expected number of clients and a finite MSE, and a final entry with as many clients and a
finite MSE. Otherwise prints every problem found and exits 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def problems(results: dict, clients: int, rounds: int) -> list[str]:
    found: list[str] = []
    entries = results.get("rounds")
    if not isinstance(entries, list):
        return ["no 'rounds' list"]
    if len(entries) != rounds:
        found.append(f"{len(entries)} rounds recorded, expected {rounds}")
    for entry in entries:
        number = entry.get("round", "?")
        names = entry.get("clients")
        if not isinstance(names, list) or len(set(names)) != clients:
            found.append(f"round {number}: clients {names!r}, expected {clients} distinct")
        if not finite(entry.get("mse")):
            found.append(f"round {number}: mse {entry.get('mse')!r} is not a finite number")
    final = results.get("final")
    if not isinstance(final, dict):
        found.append(f"final is {final!r}, expected an object")
    else:
        if final.get("clients") != clients:
            found.append(f"final: clients {final.get('clients')!r}, expected {clients}")
        if not finite(final.get("mse")):
            found.append(f"final: mse {final.get('mse')!r} is not a finite number")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results JSON written by the server")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        with open(args.results, encoding="utf-8") as handle:
            results = json.load(handle)
    except (OSError, ValueError) as error:
        print(f"FAIL {args.results}: {error}")
        return 1
    found = problems(results, args.clients, args.rounds)
    for problem in found:
        print(f"FAIL {args.results}: {problem}")
    if found:
        return 1
    mses = ", ".join(f"{entry['mse']:.6g}" for entry in results["rounds"])
    print(
        f"ok: model {results.get('model')}, {args.rounds} rounds x {args.clients} clients, "
        f"round MSEs {mses}, final MSE {results['final']['mse']:.6g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
