"""A province's side of threshold HE: encrypt and sign its uploads, decrypt only checked sums.

Its uploads leave encrypted under the federation's key and signed with its certificate's key for
the run, the round and the phase's session (common/he_relay.py). A decryption task brings the
uploads the server says it summed; the province checks them before it applies its key share to
their product: at least the threshold of distinct share holders, each upload signed by its
province for this run, round and session, and no other sum of this round's phase decrypted
before, in this run (client/he_record.py, kept on disk). Any failed check is refused with a
clear error, so a server can have neither one province's upload decrypted alone nor two sums of
one round whose difference is one province's. Without certificates (--insecure) the signatures
cannot be made or checked, and a server could forge the other uploads.
"""

from __future__ import annotations

import hashlib
import logging

from client.groups import TaskGroups
from client.he_record import Decryption, DecryptionRecord, RecordError
from common import he_relay, paillier, threshold
from common.keysign import Identity
from common.protection import HESession
from common.tensors import Arrays

log = logging.getLogger("fedstock.client")


class HEError(RuntimeError):
    """The server asks for what this province will not do under HE; the message says why."""


class HEClient:
    """This province's key share, its certificate if any, and the record of the sums it has
    decrypted."""

    def __init__(
        self,
        share: threshold.Share | None,
        identity: Identity | None = None,
        record: DecryptionRecord | None = None,
    ) -> None:
        self.share = share
        self.identity = identity
        self.record = record or DecryptionRecord()

    def _share(self) -> threshold.Share:
        if self.share is None:
            raise HEError(
                "the server asks for encrypted uploads; start with --he-key FILE, this "
                "province's share from `python -m client.he_keys`"
            )
        return self.share

    @staticmethod
    def _context(groups: TaskGroups) -> he_relay.Context:
        """The run, round and session the task names, each required."""
        named = groups.need(HESession)
        if not named.he_session:
            raise HEError("the server's task names no HE session (he_session)")
        if not named.he_run:
            raise HEError("the server's task names no HE run (he_run)")
        number = groups.number
        if number is None or number.round < 0:
            raise HEError(f"the server's task names no round, or a bad one ({number!r})")
        return he_relay.Context(named.he_run, number.round, named.he_session)

    def protect(self, arrays: Arrays, groups: TaskGroups) -> Arrays:
        """`arrays` encrypted, with this province's signature over them for the run, round and
        session."""
        n, context = self._share().public.n, self._context(groups)
        sealed = {name: paillier.encrypt(array, n) for name, array in arrays.items()}
        if self.identity is None:
            return {**sealed, **he_relay.proofs(b"", b"")}
        signed = he_relay.message(context, self.identity.province, sealed)
        signature = self.identity.sign_message(signed)
        return {**sealed, **he_relay.proofs(signature, self.identity.certificate)}

    def partial(self, groups: TaskGroups, relayed: Arrays) -> Arrays:
        """This share's partial decryption of the product of the relayed uploads, once checked."""
        share, context = self._share(), self._context(groups)
        try:
            uploads = he_relay.unpack(relayed)
        except ValueError as error:
            raise HEError(str(error)) from None
        public = share.public
        strangers = sorted(set(uploads) - set(public.members))
        if strangers:
            raise HEError(f"the sum to decrypt holds uploads of {strangers}, who hold no share")
        if len(uploads) < public.threshold:
            raise HEError(
                f"asked to decrypt a sum of {len(uploads)} provinces' uploads, fewer than the "
                f"threshold of {public.threshold}; refusing (is the server tampering?)"
            )
        sealed = {p: he_relay.ciphertexts(upload) for p, upload in uploads.items()}
        if len({tuple(sorted(s)) for s in sealed.values()}) != 1:
            raise HEError("the relayed uploads do not hold the same tensors")
        self._check_signatures(context, uploads, sealed)
        n, first = public.n, next(iter(sealed.values()))
        try:
            summed = {name: paillier.add([s[name] for s in sealed.values()], n) for name in first}
        except paillier.CiphertextError as error:
            raise HEError(f"a relayed upload is not ciphertext: {error}") from None
        digests = {
            p: hashlib.sha256(he_relay.message(context, p, s)).hexdigest()
            for p, s in sealed.items()
        }
        try:  # kept on disk before the partial decryption leaves
            self.record.admit(
                Decryption(context.run, context.round, he_relay.phase(first), digests)
            )
        except RecordError as error:
            raise HEError(str(error)) from None
        return {
            name: paillier.to_tensor(
                threshold.partial(share, paillier.from_tensor(tensor, n)), tensor.shape[:-1], n
            )
            for name, tensor in summed.items()
        }

    def _check_signatures(
        self, context: he_relay.Context, uploads: dict[str, Arrays], sealed: dict[str, Arrays]
    ) -> None:
        if self.identity is None:
            log.warning(
                "HE session %s: the uploads to decrypt are unsigned (no certificates): nothing "
                "stops the server from forging the others around one province's upload",
                context.session,
            )
            return
        for province, upload in uploads.items():
            self.identity.verify_message(
                he_relay.message(context, province, sealed[province]),
                province,
                bytes(upload.get(he_relay.SIGNATURE, b"")),
                bytes(upload.get(he_relay.CERTIFICATE, b"")),
                f"HE session {context.session}: the upload relayed as {province}'s",
                "decrypt a sum with it",
            )
