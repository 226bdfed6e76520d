"""`python -m client.he_keys DIR`: deal the federation's threshold Paillier key, once.

Run by the data owners' key ceremony (or one province they trust), never by the server: the
dealer makes n = pq, splits the decryption exponent into one share per province so that any
`--threshold` of them decrypt (common/threshold.py), writes DIR/<province>.key for each province
and DIR/he.pub for the server, and forgets p and q when it exits. Give each province its own
.key file out of band, and only its own: it never goes through the server. he.pub holds the
modulus, the threshold and who holds which share; the server can decrypt nothing with it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from phe import paillier as phe

from common import threshold
from common.members import majority
from common.paillier import MIN_KEY_BITS, check_key_size, public_fields
from common.provinces import PROVINCES


def write_keys(
    folder: Path,
    bits: int = MIN_KEY_BITS,
    provinces: Sequence[str] = PROVINCES,
    needed: int | None = None,
) -> tuple[dict[str, Path], Path]:
    """Each province's share file and the public key file, dealt afresh into `folder`."""
    _, private = phe.generate_paillier_keypair(n_length=bits)
    public, shares = threshold.deal(
        private.p, private.q, provinces, needed or majority(len(provinces))
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for province, share in zip(public.members, shares, strict=True):
        paths[province] = folder / f"{province}.key"
        handle = os.open(paths[province], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(handle, "w") as out:
            json.dump(
                {**public_fields(public), "index": share.index, "share": f"{share.secret:x}"}, out
            )
    shared = folder / "he.pub"
    shared.write_text(json.dumps(public_fields(public)))
    return paths, shared


def read_share(path: Path, province: str, allow_small: bool = False) -> threshold.Share:
    """`province`'s share in `path`; ValueError if unreadable, dealt to another province, not a
    share (such as a key from before threshold decryption), or below the minimum size unless
    allowed."""
    try:
        fields = json.loads(path.read_text())
        if "share" not in fields:
            raise ValueError(
                "it holds no threshold share (a single private key from an earlier version "
                "is no longer used: deal shares with `python -m client.he_keys DIR`)"
            )
        public = threshold.PublicKey(
            check_key_size(int(fields["n"], 16), allow_small),
            int(fields["threshold"]),
            tuple(fields["members"]),
        )
        index = int(fields["index"])
        if public.index(province) != index:
            raise ValueError(f"it is share {index}, not {province}'s")
        return threshold.Share(public, index, int(fields["share"], 16))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read a Paillier key share from {path}: {error}") from None


if __name__ == "__main__":  # the command line is client/he_keys_cli.py
    from client.he_keys_cli import main

    sys.exit(main())
