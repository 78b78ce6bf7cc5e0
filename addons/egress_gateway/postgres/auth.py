"""Authentication: the agent's placeholder check, and the gateway's own login upstream.

The gateway logs in as the entry's ``user`` with SCRAM-SHA-256, md5 or (over TLS only)
cleartext. SCRAM-SHA-256-PLUS (channel binding) is never chosen: it binds the login to the TLS
connection the client sees, which a man in the middle (the gateway) cannot pass on.
"""

from __future__ import annotations

import hashlib
import hmac

import scramp

from egress_gateway.postgres import wire


class AuthError(Exception):
    """The upstream login failed or asked for something the gateway does not do."""


def placeholder_ok(sent: bytes, placeholder: str) -> bool:
    return hmac.compare_digest(sent, placeholder.encode())


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    inner = hashlib.md5(password.encode() + user.encode()).hexdigest()  # noqa: S324 - protocol
    return b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()  # noqa: S324


class UpstreamLogin:
    """Answers the server's Authentication requests; `step` returns the bytes to send back."""

    def __init__(self, user: str, password: str, tls: bool) -> None:
        self.user = user
        self._password = password
        self.tls = tls
        self.method: str | None = None
        self._scram: scramp.ScramClient | None = None
        self.done = False

    def step(self, body: bytes) -> bytes | None:
        """One AuthenticationXXX message body -> the reply (None: nothing to send)."""
        code, data = wire.parse_auth(body)
        if code == 0:  # AuthenticationOk
            if self.method is None:
                self.method = "trust"
            self.done = True
            return None
        if code == 3:  # cleartext
            if not self.tls:
                raise AuthError("the server asks for a cleartext password over an unencrypted "
                                "connection; the gateway refuses to send it")
            self.method = "password"
            return wire.password_message(wire.cstr(self._password))
        if code == 5:  # md5
            if len(data) != 4:
                raise AuthError("malformed md5 salt")
            self.method = "md5"
            return wire.password_message(wire.cstr(md5_password(self.user, self._password, data)))
        if code == 10:  # SASL
            mechs = wire.parse_sasl_mechanisms(data)
            if "SCRAM-SHA-256" not in mechs:
                raise AuthError(f"the server offers no SASL mechanism the gateway supports "
                                f"({', '.join(mechs) or 'none'}; channel binding cannot cross "
                                "a proxy)")
            self.method = "scram-sha-256"
            try:
                self._scram = scramp.ScramClient(["SCRAM-SHA-256"], self.user, self._password)
                first = self._scram.get_client_first()
            except scramp.ScramException as e:
                raise AuthError(f"SCRAM: {e}") from None
            return wire.sasl_initial("SCRAM-SHA-256", first.encode())
        if code == 11:  # SASLContinue
            if self._scram is None:
                raise AuthError("unexpected SASL continue")
            try:
                self._scram.set_server_first(data.decode())
                return wire.password_message(self._scram.get_client_final().encode())
            except (scramp.ScramException, UnicodeDecodeError) as e:
                raise AuthError(f"SCRAM: {e}") from None
        if code == 12:  # SASLFinal
            if self._scram is None:
                raise AuthError("unexpected SASL final")
            try:
                self._scram.set_server_final(data.decode())
            except (scramp.ScramException, UnicodeDecodeError):
                raise AuthError("SCRAM: the server's signature does not verify") from None
            return None
        raise AuthError(f"the server asks for an authentication method the gateway does not "
                        f"support (code {code})")
