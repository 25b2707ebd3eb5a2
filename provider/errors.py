"""The provider's one exception tree. Pure.

Every error the provider raises derives from :class:`ProviderError`. WIT-level
failures (a component's ``result::err``) are *values*, never exceptions; what
is raised here are transport and input failures, chained with ``from exc``
when they wrap a lower-level error::

    ProviderError
    ├── CodecError                 bytes that are not a valid wRPC value
    │   ├── IncompleteValue        more bytes are needed (``needed`` tells how many in all)
    │   └── InvalidEncoding        bytes that can never decode (bad tag, overflow, bad UTF-8, trailing bytes)
    │       └── ValueTooLarge      a declared length takes the value past the receiver's limit
    ├── WrpcError                  a wRPC invocation failed on the wire
    │   ├── NoResponders           nobody serves the invocation subject (NATS 503)
    │   ├── InvocationTimeout      a deadline passed while waiting for the peer
    │   ├── IncompleteResults      the result stream ended before a value (the callee trapped)
    │   ├── ProtocolViolation      the peer broke the wRPC protocol (no reply subject, bad status…)
    │   ├── TransportClosed        the transport was closed while the call was in flight
    │   ├── Overloaded             a served function is over one of its limits: answered with no results
    │   ├── OutboundBufferFull     NATS is disconnected and its reconnect buffer is full: not sent
    │   ├── MessageTooLarge        one NATS message cannot carry it (the server's max_payload)
    │   └── NatsProtocolError      the NATS server sent what is not the NATS client protocol
    ├── ConfigError                bad input from the host or a link (HostData, link config, secrets)
    │   └── InvalidKey             an nkey's text that does not decode (base32, checksum, prefix, length)
    └── ArchiveError               a provider archive (PAR) or its claims that a host or wash would refuse
"""

from __future__ import annotations


class ProviderError(Exception):
    """Root of every exception the provider raises."""


class CodecError(ProviderError):
    """Bytes that are not (or not yet) a valid encoding of the expected type."""


class IncompleteValue(CodecError):
    """The buffer ends before the value does.

    ``needed`` is the smallest total buffer length at which decoding can make
    progress, so a streaming reader can skip retries until that many bytes
    have arrived.
    """

    def __init__(self, needed: int, what: str) -> None:
        super().__init__(f"need more bytes (truncated {what}): at least {needed} in all")
        self.needed = needed
        self.what = what


class InvalidEncoding(CodecError):
    """Bytes that can never be decoded as the expected type, however many more arrive."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset


class ValueTooLarge(InvalidEncoding):
    """The value would be larger than the receiver accepts (``limit`` bytes), so it is rejected
    as soon as a declared length shows it, before those bytes arrive."""

    def __init__(self, needed: int, limit: int, what: str) -> None:
        super().__init__(f"{what} would need {needed} bytes, more than the limit of {limit}", 0)
        self.needed = needed
        self.limit = limit


class WrpcError(ProviderError):
    """A wRPC invocation failed on the wire."""


class NoResponders(WrpcError):
    """NATS answered 503: no subscriber serves the invocation subject."""

    def __init__(self, subject: str) -> None:
        super().__init__(f"no responders for {subject!r} (is the target running and linked?)")
        self.subject = subject


class InvocationTimeout(WrpcError):
    """A deadline passed while waiting for the handshake, params or results."""

    def __init__(self, subject: str, waiting_for: str, timeout: float) -> None:
        super().__init__(f"timed out after {timeout:.3f}s waiting for {waiting_for} of {subject!r}")
        self.subject = subject
        self.waiting_for = waiting_for
        self.timeout = timeout


class IncompleteResults(WrpcError):
    """The result stream ended (empty EOF message) before a whole value arrived.

    This is how a wRPC server reports a trap or a failed handler (protocol spec §3.4).
    """

    def __init__(self, subject: str, received: int) -> None:
        super().__init__(
            f"{subject!r} ended its results after {received} byte(s) without a complete value "
            "(the callee trapped or failed)"
        )
        self.subject = subject
        self.received = received


class ProtocolViolation(WrpcError):
    """The peer broke the wRPC protocol."""


class NatsProtocolError(WrpcError):
    """The NATS server sent bytes that are not the NATS client protocol (a malformed ``MSG``
    line, a body not followed by CRLF, an over-long line): the connection cannot go on."""


class TransportClosed(WrpcError):
    """The transport closed while an invocation was still in flight."""


class Overloaded(WrpcError):
    """A served function is over one of its limits (calls awaiting params, queued calls, held
    bytes): the call was answered at once with the empty result stream instead of waiting."""


class OutboundBufferFull(WrpcError):
    """NATS is disconnected and what waits to be written would pass the reconnect buffer's
    limit (nats-py's ``pending_size``): the message was not queued."""

    def __init__(self, pending: int, size: int, limit: int) -> None:
        super().__init__(
            f"NATS is disconnected and {pending} byte(s) already wait to be sent: "
            f"{size} more would pass the limit of {limit}; not sent"
        )
        self.pending = pending
        self.size = size
        self.limit = limit


class MessageTooLarge(WrpcError):
    """A message (not a chunked wRPC call) larger than the NATS server's ``max_payload``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes do not fit in one NATS message (max_payload {limit})")
        self.size = size
        self.limit = limit


class ConfigError(ProviderError):
    """Bad input from the host or a link: HostData, link config, secrets."""


class InvalidKey(ConfigError):
    """An nkey's text (``A…``, ``V…``, ``X…``, ``SA…``…) that is not base32, fails its checksum,
    has another key type's prefix or the wrong length."""


class ArchiveError(ProviderError):
    """A provider archive that is malformed, tampered with, incomplete or wrongly signed.

    The message names the entry or claim at fault, as ``python -m provider.archive inspect``
    prints it.
    """
