"""wascap JWTs: the signed claims a provider archive carries as ``claims.jwt`` (protocol spec §11.2). Pure.

A token is ``b64url(header).b64url(claims).b64url(signature)`` without padding; the header
is ``{"typ":"jwt","alg":"Ed25519"}``; the signature is the issuer's Ed25519 signature of
``header.claims`` (the text of both segments). For a provider the claims are::

    {"exp"?, "jti", "iat", "iss": "A…", "sub": "V…", "nbf"?,
     "wascap": {"name", "vendor", "rev"?, "ver"?, "target_hashes": {"x86_64-linux": "<SHA-256, UPPER hex>"},
                "config_schema"?},
     "wascap_revision": 3}

in the field order wascap's serde structs write them. A 1.9 host only *decodes* these
(:func:`decode`); :func:`verify` checks what ``wash inspect`` and policy services look at:
the header, the key types (issuer an account key, subject a service key), the signature,
and the validity window.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from provider import nkeys
from provider.errors import ArchiveError, InvalidKey

HEADER = {"typ": "jwt", "alg": "Ed25519"}
WASCAP_REVISION = 3
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_JTI_LENGTH = 22  # as long as the nuid wascap draws


@dataclass(frozen=True)
class ProviderClaims:
    """The claims of a capability provider (wascap's ``Claims<CapabilityProvider>``)."""

    name: str | None
    vendor: str
    issuer: str
    subject: str
    issued_at: int
    jti: str
    target_hashes: Mapping[str, str] = field(default_factory=dict)
    version: str | None = None
    revision: int | None = None
    expires: int | None = None
    not_before: int | None = None
    config_schema: Any = None
    wascap_revision: int | None = WASCAP_REVISION

    def to_json(self) -> dict[str, Any]:
        """The claims object, keys in wascap's order, optional ones left out when unset."""
        wascap: dict[str, Any] = {"name": self.name, "vendor": self.vendor}
        if self.revision is not None:
            wascap["rev"] = self.revision
        if self.version is not None:
            wascap["ver"] = self.version
        wascap["target_hashes"] = dict(sorted(self.target_hashes.items()))
        if self.config_schema is not None:
            wascap["config_schema"] = self.config_schema
        claims: dict[str, Any] = {}
        if self.expires is not None:
            claims["exp"] = self.expires
        claims.update(jti=self.jti, iat=self.issued_at, iss=self.issuer, sub=self.subject)
        if self.not_before is not None:
            claims["nbf"] = self.not_before
        claims["wascap"] = wascap
        if self.wascap_revision is not None:
            claims["wascap_revision"] = self.wascap_revision
        return claims


def new_claims(
    *,
    name: str,
    vendor: str,
    issuer: str,
    subject: str,
    target_hashes: Mapping[str, str],
    issued_at: int,
    version: str | None = None,
    revision: int | None = None,
) -> ProviderClaims:
    """Claims for a new archive, as ``wash par create`` makes them (no expiry).

    wascap draws ``jti`` at random; here it is derived from everything else, so the same
    inputs signed at the same second give the same token (Ed25519 signatures are
    deterministic) and a different build or time gives a different id.
    """
    claims = ProviderClaims(
        name=name,
        vendor=vendor,
        issuer=issuer,
        subject=subject,
        issued_at=issued_at,
        jti="",
        target_hashes=dict(target_hashes),
        version=version,
        revision=revision,
    )
    digest = hashlib.sha256(_json(claims.to_json())).digest()
    number = int.from_bytes(digest, "big")
    jti = ""
    for _ in range(_JTI_LENGTH):
        number, digit = divmod(number, len(_BASE62))
        jti += _BASE62[digit]
    return replace(claims, jti=jti)


def _json(value: object) -> bytes:
    # serde_json's compact form: no spaces, non-ASCII as UTF-8.
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _segment(value: object) -> str:
    return base64.urlsafe_b64encode(_json(value)).decode().rstrip("=")


def _unsegment(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ArchiveError(f"claims.jwt: the {what} is not base64url") from exc


def _json_segment(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(_unsegment(text, what))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArchiveError(f"claims.jwt: the {what} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ArchiveError(f"claims.jwt: the {what} is not a JSON object")
    return value


def encode(claims: ProviderClaims, issuer: nkeys.KeyPair) -> str:
    """The signed token. ``issuer`` must be the account key the claims name as ``iss``."""
    if issuer.prefix != nkeys.ACCOUNT:
        raise ArchiveError(f"the issuer must be {nkeys.describe(nkeys.ACCOUNT)}")
    if issuer.public != claims.issuer:
        raise ArchiveError(f"the claims name {claims.issuer} as issuer, but the key is {issuer.public}")
    signed = f"{_segment(HEADER)}.{_segment(claims.to_json())}"
    signature = base64.urlsafe_b64encode(issuer.sign(signed.encode())).decode().rstrip("=")
    return f"{signed}.{signature}"


def _split(token: str) -> list[str]:
    segments = token.strip().split(".")
    if len(segments) != 3:
        raise ArchiveError(f"claims.jwt: a JWT has 3 segments, this one {len(segments)}")
    return segments


def _optional(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ArchiveError(f"claims.jwt: {where}{key} has the wrong type ({type(value).__name__})")
    return value


def _required(obj: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in obj:
        raise ArchiveError(f"claims.jwt: {where}{key} is missing")
    return _optional(obj, key, kind, where)


def from_json(claims: Mapping[str, Any]) -> ProviderClaims:
    """Claims from their JSON object, as wascap's serde reads them (unknown keys ignored, such
    as ``capid`` from before wasmCloud 1.0). Raises :class:`ArchiveError`."""
    wascap = claims.get("wascap")
    if not isinstance(wascap, dict):
        # A 1.9 host unwraps this and panics: say it plainly instead.
        raise ArchiveError("claims.jwt: the claims have no wascap object")
    hashes = _required(wascap, "target_hashes", dict, "wascap.")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()):
        raise ArchiveError("claims.jwt: wascap.target_hashes must map strings to strings")
    issued_at = _required(claims, "iat", int, "")
    if issued_at is None or issued_at < 0:
        raise ArchiveError("claims.jwt: iat must be a whole number of seconds since 1970")
    vendor = _required(wascap, "vendor", str, "wascap.")
    return ProviderClaims(
        name=_optional(wascap, "name", str, "wascap."),
        vendor=vendor if vendor is not None else "",
        issuer=_required(claims, "iss", str, "") or "",
        subject=_required(claims, "sub", str, "") or "",
        issued_at=issued_at,
        jti=_required(claims, "jti", str, "") or "",
        target_hashes=dict(hashes),
        version=_optional(wascap, "ver", str, "wascap."),
        revision=_optional(wascap, "rev", int, "wascap."),
        expires=_optional(claims, "exp", int, ""),
        not_before=_optional(claims, "nbf", int, ""),
        config_schema=wascap.get("config_schema"),
        wascap_revision=_optional(claims, "wascap_revision", int, ""),
    )


def decode(token: str) -> ProviderClaims:
    """The claims of ``token`` without checking its signature: what a 1.9 host does when it
    loads an archive. Raises :class:`ArchiveError`."""
    return from_json(_json_segment(_split(token)[1], "claims segment"))


def problems(token: str, now: int) -> list[str]:
    """Everything ``wash inspect`` or a policy service would find wrong with ``token`` at
    time ``now`` (Unix seconds); empty when it verifies.

    The token must decode (else :class:`ArchiveError`); then: the header, the issuer an
    account key and the subject a service key (as ``wash par create`` makes them), the
    issuer's signature, ``exp`` and ``nbf``.
    """
    head, body, signature = _split(token)
    claims = decode(token)
    found: list[str] = []
    header = _json_segment(head, "header")
    if header.get("alg") != HEADER["alg"] or header.get("typ") != HEADER["typ"]:
        found.append(f"the header is {_json(header).decode()}, not {_json(HEADER).decode()}")
    issuer_ok = True
    for key, prefix, what in (
        (claims.issuer, nkeys.ACCOUNT, "the issuer (iss)"),
        (claims.subject, nkeys.SERVICE, "the subject (sub)"),
    ):
        try:
            nkeys.decode_public(key, prefix, what)
        except InvalidKey as exc:
            found.append(str(exc))
            issuer_ok = issuer_ok and prefix != nkeys.ACCOUNT
    if issuer_ok:
        try:
            raw = _unsegment(signature, "signature")
        except ArchiveError as exc:
            found.append(str(exc).removeprefix("claims.jwt: "))
        else:
            if not nkeys.verify(claims.issuer, nkeys.ACCOUNT, f"{head}.{body}".encode(), raw):
                found.append(f"the signature is not {claims.issuer}'s (forged or altered claims)")
    if claims.expires is not None and claims.expires <= now:
        found.append(f"the claims expired at {claims.expires} (now {now})")
    if claims.not_before is not None and claims.not_before > now:
        found.append(f"the claims are not valid before {claims.not_before} (now {now})")
    return found


def verify(token: str, now: int) -> ProviderClaims:
    """The claims of ``token`` once :func:`problems` finds none. Raises :class:`ArchiveError`."""
    found = problems(token, now)
    if found:
        raise ArchiveError("claims.jwt: " + "; ".join(found))
    return decode(token)
