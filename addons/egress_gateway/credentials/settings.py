"""The policy's ``credentials`` section: secrets bound to destinations, and reading their values.

Each entry binds a secret to a destination (host glob, optional methods and path glob) and says
how it is presented (a header: raw, ``Bearer`` or ``Basic``; or a query parameter). The value
comes from an environment variable or a file, read by `read_secret` when the policy is loaded:
a missing variable or file is a policy error naming the entry, so start-up stops and a hot
reload keeps the last good policy. The value lives only in a `Secret` (masked ``repr``).
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path
from typing import Literal

from mitmproxy import http
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from egress_gateway.net import hosts, urlpath
from egress_gateway.policy import validators

MIN_SECRET_LENGTH = 8
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FORBIDDEN_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te",
    "trailer", "proxy-authorization", "proxy-connection", "content-encoding",
})


class Secret:
    """A credential value: ``repr``/``str`` never show it; `reveal` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("a credential secret is not serialisable")


class _CredModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def read_secret(b: CredentialBinding) -> Secret:
    """Read and check `b`'s value from its environment variable or file (at policy load).

    Raises ValueError naming the entry (and the variable or file): the policy is refused.
    """
    if b.env is not None:
        value = os.environ.get(b.env)
        if value is None:
            raise ValueError(f"credential {b.name!r}: environment variable {b.env} is not set")
        where = f"environment variable {b.env}"
    else:
        path = Path(b.file or "").expanduser()
        try:
            value = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
            raise ValueError(f"credential {b.name!r}: cannot read file {path}: {reason}") from None
        value = value.rstrip("\r\n")
        where = f"file {path}"
    if not value:
        raise ValueError(f"credential {b.name!r}: {where} is empty")
    if len(value) < MIN_SECRET_LENGTH:
        raise ValueError(f"credential {b.name!r}: the value in {where} is shorter than "
                         f"{MIN_SECRET_LENGTH} characters (too short to guard against leaks)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or not value.isprintable():
        raise ValueError(f"credential {b.name!r}: the value in {where} contains control or "
                         "non-printable characters")
    if b.header is not None and b.format != "basic" and value != value.strip():
        raise ValueError(f"credential {b.name!r}: the value in {where} has surrounding whitespace")
    low, ph = value.lower(), b.placeholder.lower()
    if ph in low or low in ph:
        raise ValueError(f"credential {b.name!r}: the placeholder and the value in {where} overlap; "
                         "choose a placeholder that shares nothing with the secret")
    if b.format == "basic" and ":" not in value:
        raise ValueError(f"credential {b.name!r}: format basic needs 'user:password' in {where}")
    return Secret(value)


class CredentialBinding(_CredModel):
    """A secret bound to a destination, presented by the gateway in place of a placeholder."""

    name: str = Field(description="Unique name of the entry (letters, digits, '_', '.', '-'); "
                      "appears in logs, audit lines and refusals, never the value.")
    host: str = Field(description="Destination host: exact or '*.domain' (any depth below).")
    methods: validators.Methods = Field(
        None, min_length=1, description="HTTP methods (default: any).")
    path: validators.PathGlobText = Field(
        None, description="Path glob, e.g. '/v1/*' ('*' matches anything, '/' included; '/x/*' "
        "also matches '/x'; case-sensitive). Both the raw path and the path after %-decoding and "
        "removing dot segments must match (the query is not part of the path). Default: any path.")
    header: str | None = Field(None, description="Header that carries the credential, e.g. "
                               "x-api-key or Authorization. Give exactly one of header/query.")
    query: str | None = Field(None, description="Query parameter that carries the credential.")
    format: Literal["raw", "bearer", "basic"] = Field(
        "raw", description="How a header presents the value: raw, 'Bearer <value>', or "
        "'Basic base64(<value>)' where the value is 'user:password'.")
    env: str | None = Field(None, description="Environment variable holding the value. Give "
                            "exactly one of env/file. Missing at load: the policy is refused.")
    file: str | None = Field(None, description="Absolute path of a file holding the value "
                             "(trailing newline stripped), read when the policy is loaded.")
    placeholder: str = Field(description="What the agent is configured with instead of the "
                             "secret, e.g. 'gateway-placeholder-anthropic' (8-256 visible ASCII "
                             "characters). Seen anywhere else: refused as a leak.")
    allow_plain_http: bool = Field(False, description="Also inject over plain HTTP (default: "
                                   "only over TLS to the upstream; plain HTTP is refused).")

    _secret: Secret | None = PrivateAttr(default=None)
    _glob: urlpath.PathGlob | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _v_name(cls, v: str) -> str:
        return validators.entry_name(v, "credential")

    @field_validator("host")
    @classmethod
    def _v_host(cls, v: str) -> str:
        return hosts.validate_host_glob(v)

    @field_validator("header")
    @classmethod
    def _v_header(cls, v: str | None) -> str | None:
        if v is None:
            return None
        if not _TOKEN.match(v):
            raise ValueError(f"{v!r} is not a header name")
        if v.lower() in _FORBIDDEN_HEADERS:
            raise ValueError(f"{v!r} cannot carry a credential")
        return v

    @field_validator("query")
    @classmethod
    def _v_query(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "&=#? ")):
            raise ValueError(f"{v!r} is not a query parameter name")
        return v

    @field_validator("env")
    @classmethod
    def _v_env(cls, v: str | None) -> str | None:
        if v is not None and not _ENV.match(v):
            raise ValueError(f"{v!r} is not an environment variable name")
        return v

    @field_validator("file")
    @classmethod
    def _v_file(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().is_absolute():
            raise ValueError(f"{v!r}: give an absolute path")
        return v

    @field_validator("placeholder")
    @classmethod
    def _v_placeholder(cls, v: str) -> str:
        if not 8 <= len(v) <= 256 or any(not 0x21 <= ord(c) <= 0x7E for c in v):
            raise ValueError("a placeholder is 8-256 visible ASCII characters (no spaces)")
        return v

    @model_validator(mode="after")
    def _v_entry(self) -> CredentialBinding:
        if (self.header is None) == (self.query is None):
            raise ValueError(f"credential {self.name!r}: give exactly one of 'header' or 'query'")
        if self.query is not None and self.format != "raw":
            raise ValueError(f"credential {self.name!r}: a query parameter takes format raw")
        if (self.env is None) == (self.file is None):
            raise ValueError(f"credential {self.name!r}: give exactly one of 'env' or 'file'")
        if self.path is not None:
            self._glob = urlpath.PathGlob(self.path, case_sensitive=True)
        # The value is read at load time: a missing one refuses the whole policy.
        self._secret = read_secret(self)
        return self

    # --- behaviour ------------------------------------------------------------------------
    @property
    def secret(self) -> Secret:
        assert self._secret is not None
        return self._secret

    def matches(self, request: http.Request) -> bool:
        """Whether this binding applies to `request` (host, method, path without query)."""
        try:
            host = hosts.normalize_host(request.host)
        except Exception:
            return False
        if not hosts.host_matches(self.host, host):
            return False
        if self.methods is not None and request.method.upper() not in self.methods:
            return False
        # a secret goes only where both spellings of the path agree ('/v1/../admin' is not '/v1/*')
        return self._glob is None or self._glob.matches_both(request.path)

    def carried_by(self, request: http.Request) -> bool:
        """Whether the agent sent this binding's header (or query parameter): what is replaced."""
        if self.header is not None:
            return self.header in request.headers
        return self.query in request.query

    def presented(self) -> str:
        """The header value or query value the upstream receives."""
        value = self.secret.reveal()
        if self.format == "bearer":
            return f"Bearer {value}"
        if self.format == "basic":
            return "Basic " + base64.b64encode(value.encode()).decode()
        return value

    def apply(self, request: http.Request) -> None:
        """Set the real value on `request` (a throw-away copy, never the flow's request)."""
        if self.header is not None:
            request.headers[self.header] = self.presented()
        else:
            request.query[self.query] = self.presented()


Credentials = validators.named_list(CredentialBinding, "credential")


def bindings_of(policy) -> list[CredentialBinding]:
    # Database passwords (postgres entries) are guarded too: bound to no HTTP destination.
    return list(getattr(policy, "credentials", None) or ()) + [
        e.as_credential() for e in getattr(policy, "postgres", None) or ()]
