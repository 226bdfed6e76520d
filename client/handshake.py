"""What a failed connection says about the two sides' TLS settings, in words a user can act on.

gRPC reports a failed handshake as UNAVAILABLE, exactly like a server that is not up yet, so a
client would retry for its whole connect timeout. Retrying cannot mend a mismatch: the client
names it and stops.
"""

from __future__ import annotations

# A server that closes every connection before answering (it requires TLS, or it refuses this
# client's certificate) looks like one going down once; this many times in a row is a verdict.
CLOSED_BEFORE_VERDICT = 3
CLOSED = ("Socket closed", "Connection reset by peer")
UNTRUSTED = ("CERTIFICATE_VERIFY_FAILED", "certificate signature failure")


class HandshakeCheck:
    """Reads the reason of each failed attempt to join; `verdict` names a mismatch, or None."""

    def __init__(self, address: str, secure: bool) -> None:
        self.address, self.secure = address, secure
        self._closed = 0

    def verdict(self, details: str) -> str | None:
        if self.secure and "WRONG_VERSION_NUMBER" in details:
            return (
                f"the server at {self.address} speaks plaintext (it runs with --insecure): start "
                "this client with --insecure too, or give the server certificates (--tls-dir) "
                "and start both without --insecure"
            )
        if self.secure and "certificate has expired" in details:
            return (
                f"the server's certificate at {self.address} has expired: its operator must "
                "issue a new one (python -m server.certs)"
            )
        if self.secure and any(reason in details for reason in UNTRUSTED):
            return (
                f"the server's certificate at {self.address} was not issued by this client's "
                "ca.pem: the server belongs to another federation, or ca.pem is not its CA"
            )
        self._closed = self._closed + 1 if any(c in details for c in CLOSED) else 0
        if self._closed < CLOSED_BEFORE_VERDICT:
            return None
        if not self.secure:
            return (
                f"the server at {self.address} closes every plaintext connection: it requires "
                "TLS. Start this client without --insecure, with its certificates (--tls-dir), "
                "or start the server with --insecure too"
            )
        return (
            f"the server at {self.address} closes the connection during the TLS handshake: it "
            "does not accept this client's certificate (issued by another CA than the server's?)"
        )
