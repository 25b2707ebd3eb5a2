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

from provider.errors import ConfigError
from provider.wasmcloud.config import SecretValue
from provider.wasmcloud.hostdata import HostData
from provider.wasmcloud.links import LinkAnswer, LinkDefinition, LinkOp
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
        otel_config: Mapping[str, Any] | None = None,
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
            otel_config=dict(otel_config or {}),
        )

    def seal_link(
        self,
        link: LinkDefinition,
        provider: ProviderIdentity,
        values: Mapping[str, str | bytes] | None,
    ) -> LinkDefinition:
        """``link`` with ``values`` sealed into the provider's side (source or target) of it."""
        if link.source_id == provider.provider_id:
            return self.seal_sides(link, provider, source=values)
        return self.seal_sides(link, provider, target=values)

    def seal_sides(
        self,
        link: LinkDefinition,
        provider: ProviderIdentity,
        *,
        source: Mapping[str, str | bytes] | None = None,
        target: Mapping[str, str | bytes] | None = None,
    ) -> LinkDefinition:
        """``link`` with the secrets of each side sealed to the provider's xkey, as a host sends
        every link to a provider: both sides, each ``null`` when it has none (protocol spec §2.3)."""
        if source:
            link = replace(link, source_secrets=self.xkey.seal(secrets_json(source), provider.xkey.public))
        if target:
            link = replace(link, target_secrets=self.xkey.seal(secrets_json(target), provider.xkey.public))
        return link

    def subjects(self, provider: ProviderIdentity) -> ControlSubjects:
        return ControlSubjects.for_provider(self.lattice, provider.provider_id, provider.xkey.public)

    async def put_link(
        self,
        provider: ProviderIdentity,
        link: LinkDefinition,
        secrets: Mapping[str, str | bytes] | None = None,
    ) -> None:
        """Publish a link put on the provider's xkey subject (no reply), as a host does."""
        await self.nc.publish(self.subjects(provider).link_put, self._put_payload(provider, link, secrets))

    async def ask_put_link(
        self,
        provider: ProviderIdentity,
        link: LinkDefinition,
        secrets: Mapping[str, str | bytes] | None = None,
        *,
        timeout: float,
    ) -> LinkAnswer:
        """Put a link with a reply subject and return the provider's answer (applied or why not).

        Raises :class:`TimeoutError` when no answer comes within ``timeout``, and
        :class:`~provider.errors.ConfigError` when nobody listens or the answer is not one.
        """
        payload = self._put_payload(provider, link, secrets)
        return await self._ask(self.subjects(provider).link_put, payload, LinkOp.PUT, link, timeout)

    async def wait_listening(self, provider: ProviderIdentity, timeout: float) -> None:
        """Return once ``provider`` answers on its own link-put subject (its xkey's, so this very
        instance and no other instance of the same id); :class:`TimeoutError` after ``timeout``.

        Health cannot tell: every instance of a provider id answers the one health subject.
        The probe is a link that names neither side, which the provider answers as ignored.
        """
        probe = LinkDefinition(
            "local-host-probe", "local-host-probe", "wasmcloud", "messaging", ("consumer",)
        )
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await self.ask_put_link(provider, probe, timeout=timeout)
                    return
                except ConfigError:  # not subscribed yet: nobody listens on its subject
                    await asyncio.sleep(0.02)  # retrying a request that NATS answered at once

    def _put_payload(
        self, provider: ProviderIdentity, link: LinkDefinition, secrets: Mapping[str, str | bytes] | None
    ) -> bytes:
        return json.dumps(self.seal_link(link, provider, secrets).to_json()).encode()

    async def put_raw(self, provider: ProviderIdentity, payload: bytes) -> None:
        """Publish arbitrary bytes as a link put (for testing bad input)."""
        await self.nc.publish(self.subjects(provider).link_put, payload)

    def _delete_subjects(self, link: LinkDefinition) -> tuple[bytes, list[str]]:
        emptied = replace(link, source_config={}, target_config={}, source_secrets=None, target_secrets=None)
        ends = [f"wasmbus.rpc.{self.lattice}.{end}.linkdefs.del" for end in (link.source_id, link.target)]
        return json.dumps(emptied.to_json()).encode(), ends

    async def delete_link(self, link: LinkDefinition) -> None:
        """Publish a link delete to both ends, configs emptied, as the host does."""
        payload, ends = self._delete_subjects(link)
        for subject in ends:
            await self.nc.publish(subject, payload)

    async def ask_delete_link(
        self, provider: ProviderIdentity, link: LinkDefinition, *, timeout: float
    ) -> LinkAnswer:
        """Delete a link as :meth:`delete_link` does, asking the provider's end for its answer.

        Raises as :meth:`ask_put_link` does.
        """
        payload, ends = self._delete_subjects(link)
        own = f"wasmbus.rpc.{self.lattice}.{provider.provider_id}.linkdefs.del"
        for subject in ends:
            if subject != own:
                await self.nc.publish(subject, payload)
        return await self._ask(own, payload, LinkOp.DELETE, link, timeout)

    async def _ask(
        self, subject: str, payload: bytes, op: LinkOp, link: LinkDefinition, timeout: float
    ) -> LinkAnswer:
        """Request ``subject`` and check that the answer is about this ``op`` on this ``link``."""
        try:
            reply = await self.nc.request(subject, payload, timeout=timeout)
        except NatsTimeoutError:
            raise TimeoutError(f"no answer to the link {op.value} within {timeout:g}s") from None
        except NoRespondersError:
            raise ConfigError(f"no provider listens on {subject}") from None
        answer = LinkAnswer.decode(reply.data)  # the reply is from the network: checked whole
        expected = link.describe()
        if answer.op is not op or answer.link != expected:
            got = f"a {answer.op.value} of {answer.link or 'an unreadable link'}"
            reason = f" ({answer.error})" if answer.error else ""
            raise ConfigError(f"the answer to the {op.value} of {expected} is about {got}{reason}")
        return answer

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
