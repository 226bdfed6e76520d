"""The command line of `python -m client.he_keys DIR`: flags onto `client.he_keys.write_keys`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client import he_keys
from common import threshold
from common.members import majority
from common.paillier import INSECURE_KEY_FLAG, MIN_KEY_BITS
from common.provinces import PROVINCES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m client.he_keys", description=he_keys.__doc__
    )
    parser.add_argument("folder", type=Path, help="where to write each <province>.key and he.pub")
    parser.add_argument(
        "--bits", type=int, default=MIN_KEY_BITS, help="bits of the modulus n (at least 2048)"
    )
    parser.add_argument(
        "--provinces",
        default=",".join(PROVINCES),
        help="the share holders, comma-separated (default: the nine provinces)",
    )
    parser.add_argument(
        "--threshold",
        type=int,
        help="how many provinces' partial decryptions decrypt (at least 2; default: a majority)",
    )
    parser.add_argument(
        INSECURE_KEY_FLAG,
        dest="insecure_key_size",
        action="store_true",
        help="allow a modulus below 2048 bits, which can be factored: for tests only",
    )
    args = parser.parse_args(argv)
    if args.bits < MIN_KEY_BITS and not args.insecure_key_size:
        parser.error(f"--bits must be at least {MIN_KEY_BITS} (or pass {INSECURE_KEY_FLAG})")
    provinces = [p.strip() for p in args.provinces.split(",") if p.strip()]
    try:
        threshold.PublicKey(1, args.threshold or majority(len(provinces)), tuple(provinces))
    except ValueError as error:
        parser.error(str(error))
    shares, shared = he_keys.write_keys(args.folder, args.bits, provinces, args.threshold)
    print(f"one share for each province, {len(shares)} in all: {args.folder}/<province>.key")
    print(f"public key for the server: {shared}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
