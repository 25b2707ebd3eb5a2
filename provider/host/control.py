"""The host's side of the provider control protocol (protocol spec §1.2, §2): what a
wasmCloud 1.x host sends a provider, and how. Used by the local host and the tests. I/O.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from provider.wasmcloud.config import SecretValue
from provider.wasmcloud.hostdata import HostData
from provider.wasmcloud.links import LinkDefinition
from provider.wasmcloud.subjects import ControlSubjects
from provider.wasmcloud.xkeys import XKey


def new_host_id() -> str:
    """A host id shaped like a host's nkey (``N`` + 55 base32 characters); random, not a real key."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return "N" + "".join(secrets.choice(alphabet) for _ in range(55))


def secrets_json(values: Mapping[str, str | bytes]) -> bytes:
    """``{"name": {"kind": …, "value": …}}``, the plaintext of a link's sealed secrets."""
    encoded: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, str):
            encoded[name] = {"kind": "String", "value": value}
        else:
            encoded[name] = {"kind": "Bytes", "value": list(value)}
    return json.dumps(encoded).encode()


@dataclass
class ProviderIdentity:
    """A provider as one host knows it: its id and the xkey the host generated for it."""

    provider_id: str
    xkey: XKey = field(default_factory=XKey.generate)


@dataclass
class HostControl:
    """Sends a provider what a host sends: HostData, link puts and deletes, health, shutdown, config."""

    nc: NatsClient
    lattice: str = "default"
    host_id: str = field(default_factory=new_host_id)
    xkey: XKey = field(default_factory=XKey.generate)

    def host_data(
        self,
        provider: ProviderIdentity,
        *,
        nats_url: str,
        links: tuple[LinkDefinition, ...] = (),
        link_secrets: Mapping[tuple[str, str], Mapping[str, str | bytes]] | None = None,
        config: Mapping[str, str] | None = None,
        provider_secrets: Mapping[str, str | bytes] | None = None,
        log_level: str = "info",
        structured_logging: bool = False,
    ) -> HostData:
        """HostData for starting ``provider`` on this host.

        ``link_secrets`` maps (source_id, target) to the secrets of the provider's side of
        that link; they are sealed to the provider's xkey as a host does.
        """
        sealed = tuple(
            self.seal_link(link, provider, (link_secrets or {}).get((link.source_id, link.target)))
            for link in links
        )
        return HostData(
            provider_key=provider.provider_id,
            host_id=self.host_id,
            lattice_rpc_prefix=self.lattice,
            lattice_rpc_url=nats_url,
            instance_id=str(uuid.uuid4()),
            link_definitions=sealed,
            config=dict(config or {}),
            secrets={k: SecretValue(v) for k, v in (provider_secrets or {}).items()},
            host_xkey_public_key=self.xkey.public,
            provider_xkey_private_key=provider.xkey.seed,
            log_level=log_level,
            structured_logging=structured_logging,
        )

    def seal_link(
        self,
        link: LinkDefinition,
        provider: ProviderIdentity,
        values: Mapping[str, str | bytes] | None,
    ) -> LinkDefinition:
        """``link`` with ``values`` sealed into the provider's side (source or target) of it."""
        if not values:
            return link
        sealed = self.xkey.seal(secrets_json(values), provider.xkey.public)
        if link.source_id == provider.provider_id:
            return replace(link, source_secrets=sealed)
        return replace(link, target_secrets=sealed)

    def subjects(self, provider: ProviderIdentity) -> ControlSubjects:
        return ControlSubjects.for_provider(self.lattice, provider.provider_id, provider.xkey.public)

    async def put_link(
        self,
        provider: ProviderIdentity,
        link: LinkDefinition,
        secrets: Mapping[str, str | bytes] | None = None,
    ) -> None:
        """Publish a link put on the provider's xkey subject (no reply)."""
        payload = json.dumps(self.seal_link(link, provider, secrets).to_json()).encode()
        await self.nc.publish(self.subjects(provider).link_put, payload)

    async def put_raw(self, provider: ProviderIdentity, payload: bytes) -> None:
        """Publish arbitrary bytes as a link put (for testing bad input)."""
        await self.nc.publish(self.subjects(provider).link_put, payload)

    async def delete_link(self, link: LinkDefinition) -> None:
        """Publish a link delete to both ends, configs emptied, as the host does."""
        emptied = replace(link, source_config={}, target_config={}, source_secrets=None, target_secrets=None)
        payload = json.dumps(emptied.to_json()).encode()
        for end in (link.source_id, link.target):
            await self.nc.publish(f"wasmbus.rpc.{self.lattice}.{end}.linkdefs.del", payload)

    async def update_config(self, provider: ProviderIdentity, config: Mapping[str, str]) -> None:
        """Publish the complete new provider config (no reply)."""
        await self.nc.publish(self.subjects(provider).config_update, json.dumps(dict(config)).encode())

    async def health(self, provider: ProviderIdentity, timeout: float = 2.0) -> dict[str, Any] | None:
        """The provider's health answer, or ``None`` if it did not answer in time (as the host logs)."""
        try:
            reply = await self.nc.request(self.subjects(provider).health, b"", timeout=timeout)
        except (NatsTimeoutError, NoRespondersError):
            return None
        answer: dict[str, Any] = json.loads(reply.data)
        return answer

    async def wait_healthy(self, provider: ProviderIdentity, timeout: float = 10.0) -> None:
        """Ask for health until the provider says healthy; raise :class:`TimeoutError` after ``timeout``.

        Each ask is a request/reply round trip (the provider answers "starting" until ready),
        so there is no sleeping between asks.
        """
        async with asyncio.timeout(timeout):
            while True:
                answer = await self.health(provider, timeout=min(2.0, timeout))
                if answer is not None and answer.get("healthy") is True:
                    return

    async def shutdown(
        self, provider: ProviderIdentity, timeout: float = 0.3, host_id: str | None = None
    ) -> bytes | None:
        """Ask the provider to shut down (``host_id`` defaults to this host's); its reply or ``None``."""
        body = json.dumps({"host_id": self.host_id if host_id is None else host_id}).encode()
        try:
            reply = await self.nc.request(self.subjects(provider).shutdown, body, timeout=timeout)
        except (NatsTimeoutError, NoRespondersError):
            return None
        data: bytes = reply.data
        return data
