"""nkeys: the text form of NATS and wasmCloud keys, and Ed25519 key pairs. Pure.

A public key is base32 (RFC 4648, no padding) of one prefix byte, the 32 raw key bytes and
a CRC-16/XMODEM of both, little-endian. The prefix byte is the key type's letter in the
base32 alphabet shifted left by 3, so a key's first character names its type: ``A``
account, ``V`` service (a provider), ``N`` server (a host), ``U`` user, ``X`` curve (xkey),
… A seed (the private key) starts with two bytes that merge the seed prefix ``S``
(18 << 3) with the key type, so its text starts ``S`` + the type's letter: ``SA…``,
``SV…``, ``SX…`` (protocol spec §11.2).

The PyPI ``nkeys`` package rejects service keys (``SV…``) and verifies only with a seed, so
wascap claims (:mod:`provider.archive.jwt`) use this module; xkeys
(:mod:`provider.wasmcloud.xkeys`) share its encoding. Ed25519 itself is PyNaCl's.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from provider.errors import InvalidKey

SEED = 18 << 3
ACCOUNT = 0
CLUSTER = 2 << 3
MODULE = 12 << 3
SERVER = 13 << 3
OPERATOR = 14 << 3
USER = 20 << 3
SERVICE = 21 << 3
CURVE = 23 << 3

KEY_BYTES = 32
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_NAMES = {
    ACCOUNT: "an account",
    CLUSTER: "a cluster",
    MODULE: "a module",
    SERVER: "a server",
    OPERATOR: "an operator",
    USER: "a user",
    SERVICE: "a service",
    CURVE: "a curve",
}


def letter(prefix: int) -> str:
    """The first character of a public key with this prefix byte (``A`` for :data:`ACCOUNT`)."""
    return _ALPHABET[prefix >> 3]


def describe(prefix: int) -> str:
    """``an account key (A…)``: a key type as error messages name it."""
    return f"{_NAMES.get(prefix, 'an unknown')} key ({letter(prefix)}…)"


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial value 0), the nkey checksum."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        crc &= 0xFFFF
    return crc


def _encode(raw: bytes) -> str:
    return base64.b32encode(raw + crc16(raw).to_bytes(2, "little")).decode().rstrip("=")


def _checked(text: str, what: str) -> bytes:
    """The bytes of ``text`` before its checksum, once base32 and checksum are right."""
    text = text.strip()
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError) as exc:
        raise InvalidKey(f"{what} is not base32") from exc
    if len(raw) < 3 or crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise InvalidKey(f"{what} has a bad checksum")
    return raw[:-2]


def _seed_prefix(prefix: int) -> bytes:
    return bytes([SEED | (prefix >> 5), (prefix & 31) << 3])


def encode_public(prefix: int, key: bytes) -> str:
    """The text of a raw 32-byte public key of type ``prefix`` (``A…`` for :data:`ACCOUNT`)."""
    if len(key) != KEY_BYTES:
        raise InvalidKey(f"a key has {KEY_BYTES} bytes, not {len(key)}")
    return _encode(bytes([prefix]) + key)


def encode_seed(prefix: int, key: bytes) -> str:
    """The text of a raw 32-byte private key (seed) of type ``prefix`` (``SA…`` for :data:`ACCOUNT`)."""
    if len(key) != KEY_BYTES:
        raise InvalidKey(f"a seed has {KEY_BYTES} bytes, not {len(key)}")
    return _encode(_seed_prefix(prefix) + key)


def decode_public(text: str, prefix: int, what: str = "public key") -> bytes:
    """The raw 32 bytes of a public key that must be of type ``prefix``. Raises :class:`InvalidKey`
    (``what`` names the key in the message)."""
    raw = _checked(text, what)
    if len(raw) != 1 + KEY_BYTES or raw[0] != prefix:
        found = describe(raw[0]) if len(raw) == 1 + KEY_BYTES and raw[0] in _NAMES else "something else"
        raise InvalidKey(f"{what} must be {describe(prefix)}, got {found}")
    return raw[1:]


def decode_seed(text: str, prefix: int, what: str = "seed") -> bytes:
    """The raw 32-byte private key of a seed that must be of type ``prefix``. Raises :class:`InvalidKey`."""
    raw = _checked(text, what)
    if len(raw) != 2 + KEY_BYTES or raw[:2] != _seed_prefix(prefix):
        raise InvalidKey(f"{what} must be the seed of {describe(prefix)}, starting S{letter(prefix)}")
    return raw[2:]


def seed_type(text: str, what: str = "seed") -> int:
    """The key type (prefix byte) of a seed's text. Raises :class:`InvalidKey`."""
    raw = _checked(text, what)
    if len(raw) != 2 + KEY_BYTES or raw[0] & 0xF8 != SEED:
        raise InvalidKey(f"{what} is not a seed (S…)")
    return ((raw[0] & 7) << 5) | (raw[1] >> 3)


@dataclass(frozen=True, repr=False)
class KeyPair:
    """An Ed25519 nkey pair of one key type. Its ``repr`` shows the public key only."""

    prefix: int
    seed: str
    public: str

    @classmethod
    def generate(cls, prefix: int) -> KeyPair:
        """A fresh random key pair of type ``prefix``."""
        return cls._of(prefix, bytes(SigningKey.generate()))

    @classmethod
    def from_seed(cls, text: str, prefix: int, what: str = "seed") -> KeyPair:
        """The pair of a seed that must be of type ``prefix``. Raises :class:`InvalidKey`."""
        return cls._of(prefix, decode_seed(text, prefix, what))

    @classmethod
    def _of(cls, prefix: int, private: bytes) -> KeyPair:
        public = bytes(SigningKey(private).verify_key)
        return cls(prefix, encode_seed(prefix, private), encode_public(prefix, public))

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        key = SigningKey(decode_seed(self.seed, self.prefix))
        return bytes(key.sign(data).signature)

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public!r})"


def verify(public: str, prefix: int, data: bytes, signature: bytes, what: str = "public key") -> bool:
    """Whether ``signature`` is the Ed25519 signature of ``data`` by ``public`` (of type ``prefix``).

    A key that does not decode raises :class:`InvalidKey`; a bad signature is ``False``.
    """
    key = VerifyKey(decode_public(public, prefix, what))
    try:
        key.verify(data, signature)
    except (BadSignatureError, ValueError):
        return False
    return True
