"""NATS xkeys (curve25519 nkeys) and the ``xkv1`` sealed-box format (protocol spec §2.3). Pure.

An xkey is encoded as nkeys encode every key (:mod:`provider.nkeys`): the public key's
prefix is ``X`` (23 << 3), a seed's is ``S`` merged with ``X``, so seeds start ``SX``. A
sealed message is ``b"xkv1"``, a 24-byte nonce and a NaCl box (Curve25519,
XSalsa20-Poly1305) from sender to recipient.
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.utils import random

from provider import nkeys
from provider.errors import ConfigError

_VERSION = b"xkv1"
_NONCE = Box.NONCE_SIZE


def decode_public(text: str) -> bytes:
    """The raw 32-byte key of a public xkey (``X…``). Raises :class:`ConfigError`."""
    return nkeys.decode_public(text, nkeys.CURVE, "public xkey")


def decode_seed(text: str) -> bytes:
    """The raw 32-byte private key of an xkey seed (``SX…``). Raises :class:`ConfigError`."""
    return nkeys.decode_seed(text, nkeys.CURVE, "xkey seed")


def encode_public(key: bytes) -> str:
    """``X…`` for a raw 32-byte public key."""
    return nkeys.encode_public(nkeys.CURVE, key)


def encode_seed(key: bytes) -> str:
    """``SX…`` for a raw 32-byte private key."""
    return nkeys.encode_seed(nkeys.CURVE, key)


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
