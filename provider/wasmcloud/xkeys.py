"""NATS xkeys (curve25519 nkeys) and the ``xkv1`` sealed-box format (protocol spec §2.3). Pure.

An xkey is encoded as nkeys encode every key: base32 (no padding) of a prefix, the
32 raw key bytes and a little-endian CRC-16/XMODEM of both. The public key's prefix
is the single byte ``X`` (23 << 3); a seed's is two bytes, ``S`` (18 << 3) merged
with ``X``, so seeds start ``SX``. A sealed message is ``b"xkv1"``, a 24-byte nonce
and a NaCl box (Curve25519, XSalsa20-Poly1305) from sender to recipient.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random

from provider.errors import ConfigError

_PREFIX_SEED = 18 << 3
_PREFIX_CURVE = 23 << 3
_VERSION = b"xkv1"
_NONCE = Box.NONCE_SIZE


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        crc &= 0xFFFF
    return crc


def _b32decode(text: str, what: str) -> bytes:
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what} is not base32") from exc


def _checked(text: str, what: str) -> bytes:
    raw = _b32decode(text.strip(), what)
    if len(raw) < 3 or _crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise ConfigError(f"{what} has a bad checksum")
    return raw[:-2]


def _encode(raw: bytes) -> str:
    data = raw + _crc16(raw).to_bytes(2, "little")
    return base64.b32encode(data).decode().rstrip("=")


def decode_public(text: str) -> bytes:
    """The raw 32-byte key of a public xkey (``X…``). Raises :class:`ConfigError`."""
    raw = _checked(text, "public xkey")
    if len(raw) != 33 or raw[0] != _PREFIX_CURVE:
        raise ConfigError("public xkey does not start with X or has the wrong length")
    return raw[1:]


def decode_seed(text: str) -> bytes:
    """The raw 32-byte private key of an xkey seed (``SX…``). Raises :class:`ConfigError`."""
    raw = _checked(text, "xkey seed")
    expected = (_PREFIX_SEED | (_PREFIX_CURVE >> 5), (_PREFIX_CURVE & 31) << 3)
    if len(raw) != 34 or (raw[0], raw[1]) != expected:
        raise ConfigError("xkey seed does not start with SX or has the wrong length")
    return raw[2:]


def encode_public(key: bytes) -> str:
    """``X…`` for a raw 32-byte public key."""
    return _encode(bytes([_PREFIX_CURVE]) + key)


def encode_seed(key: bytes) -> str:
    """``SX…`` for a raw 32-byte private key."""
    return _encode(bytes([_PREFIX_SEED | (_PREFIX_CURVE >> 5), (_PREFIX_CURVE & 31) << 3]) + key)


@dataclass(frozen=True, repr=False)
class XKey:
    """A curve key pair. Its ``repr`` shows the public key only."""

    seed: str
    public: str

    @classmethod
    def generate(cls) -> XKey:
        """A fresh random key pair."""
        private = PrivateKey.generate()
        return cls(encode_seed(bytes(private)), encode_public(bytes(private.public_key)))

    @classmethod
    def from_seed(cls, seed: str) -> XKey:
        """The pair of an ``SX…`` seed. Raises :class:`ConfigError`."""
        private = PrivateKey(decode_seed(seed))
        return cls(seed.strip(), encode_public(bytes(private.public_key)))

    def __repr__(self) -> str:
        return f"XKey(public={self.public!r})"

    def seal(self, plaintext: bytes, recipient_public: str) -> bytes:
        """Seal ``plaintext`` from this key to ``recipient_public`` in ``xkv1`` format."""
        box = Box(PrivateKey(decode_seed(self.seed)), PublicKey(decode_public(recipient_public)))
        nonce = random(_NONCE)
        return _VERSION + nonce + box.encrypt(plaintext, nonce).ciphertext

    def open(self, sealed: bytes, sender_public: str) -> bytes:
        """Open an ``xkv1`` box sealed to this key by ``sender_public``. Raises :class:`ConfigError`."""
        if len(sealed) < len(_VERSION) + _NONCE or not sealed.startswith(_VERSION):
            raise ConfigError("sealed secrets are not in xkv1 format")
        box = Box(PrivateKey(decode_seed(self.seed)), PublicKey(decode_public(sender_public)))
        nonce = sealed[len(_VERSION) : len(_VERSION) + _NONCE]
        try:
            return box.decrypt(sealed[len(_VERSION) + _NONCE :], nonce)
        except CryptoError as exc:
            raise ConfigError("sealed secrets could not be opened (wrong keys or tampered data)") from exc
