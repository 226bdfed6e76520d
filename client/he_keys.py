"""`python -m client.he_keys DIR`: the federation's Paillier keypair, made once by the data owners.

DIR/he.key holds the private key: copy it to every province out of band (it never goes
through the server). DIR/he.pub holds only the modulus n: give it to the server, which needs
it to add ciphertexts and can decrypt nothing with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from phe import paillier

from common.paillier import INSECURE_KEY_FLAG, MIN_KEY_BITS, check_key_size


def write_keys(folder: Path, bits: int = 2048) -> tuple[Path, Path]:
    public, private = paillier.generate_paillier_keypair(n_length=bits)
    folder.mkdir(parents=True, exist_ok=True)
    secret, shared = folder / "he.key", folder / "he.pub"
    fields = {"n": f"{public.n:x}", "p": f"{private.p:x}", "q": f"{private.q:x}"}
    handle = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(handle, "w") as out:
        json.dump(fields, out)
    shared.write_text(json.dumps({"n": fields["n"]}))
    return secret, shared


def read_private_key(path: Path, allow_small: bool = False) -> paillier.PaillierPrivateKey:
    """The key in `path`; ValueError if unreadable, or below the minimum size unless allowed."""
    try:
        fields = {k: int(v, 16) for k, v in json.loads(path.read_text()).items()}
        public = paillier.PaillierPublicKey(check_key_size(fields["n"], allow_small))
        return paillier.PaillierPrivateKey(public, fields["p"], fields["q"])
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"cannot read a Paillier private key from {path}: {error}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m client.he_keys", description=__doc__
    )
    parser.add_argument("folder", type=Path, help="where to write he.key and he.pub")
    parser.add_argument(
        "--bits", type=int, default=MIN_KEY_BITS, help="bits of the modulus n (at least 2048)"
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
    secret, shared = write_keys(args.folder, args.bits)
    print(f"private key for every province: {secret}\npublic key for the server: {shared}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
