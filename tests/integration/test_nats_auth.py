"""The provider on a NATS server that requires JWT authentication (operator mode).

HostData carries ``lattice_rpc_user_jwt`` and ``lattice_rpc_user_seed``; the provider must
sign the server's nonce with the seed. The operator, account and user JWTs are made here
with the nkeys library, as ``nsc`` would make them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest

from provider.host.control import HostControl, ProviderIdentity
from provider.host.launcher import ProviderProcess
from provider.host.nats_server import NatsServer
from provider.wasmcloud.runtime import nats_credentials

WAIT = 10.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keypair(prefix: int) -> tuple[Any, str]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return nkeys.from_seed(bytearray(seed)), seed.decode()


def _jwt(signer: Any, claims: dict[str, Any]) -> str:
    """A NATS JWT (header ed25519-nkey), signed by ``signer``."""
    body = dict(claims, iat=int(time.time()), iss=signer.public_key.decode(), jti="")
    body["jti"] = base64.b32encode(hashlib.sha256(json.dumps(body).encode()).digest()).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(body).encode())}"
    return f"{signing_input}.{_b64(signer.sign(signing_input.encode()))}"


@dataclass
class Operator:
    server_config: str
    user_jwt: str
    user_seed: str


def _operator() -> Operator:
    operator, _ = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user, user_seed = _keypair(nkeys.PREFIX_BYTE_USER)
    operator_jwt = _jwt(
        operator,
        {"name": "op", "sub": operator.public_key.decode(), "nats": {"type": "operator", "version": 2}},
    )
    limits = {
        "subs": -1,
        "data": -1,
        "payload": -1,
        "imports": -1,
        "exports": -1,
        "wildcards": True,
        "conn": -1,
        "leaf": -1,
    }
    account_jwt = _jwt(
        operator,
        {
            "name": "lattice",
            "sub": account.public_key.decode(),
            "nats": {"limits": limits, "type": "account", "version": 2},
        },
    )
    user_jwt = _jwt(
        account,
        {
            "name": "provider",
            "sub": user.public_key.decode(),
            "nats": {
                "pub": {},
                "sub": {},
                "subs": -1,
                "data": -1,
                "payload": -1,
                "type": "user",
                "version": 2,
            },
        },
    )
    config = (
        f'operator: "{operator_jwt}"\n'
        "resolver: MEMORY\n"
        f'resolver_preload: {{ {account.public_key.decode()}: "{account_jwt}" }}'
    )
    return Operator(config, user_jwt, user_seed)


@pytest.fixture(scope="module")
def operator_server() -> Iterator[tuple[NatsServer, Operator]]:
    operator = _operator()
    with NatsServer(extra_config=operator.server_config, jetstream=False) as server:
        yield server, operator


def _credentials(operator: Operator) -> Any:
    return nats_credentials(operator.user_jwt, operator.user_seed)


async def test_provider_authenticates_with_the_user_jwt_and_seed(
    operator_server: tuple[NatsServer, Operator], launcher: Path
) -> None:
    """With the JWT and seed in HostData the provider connects and answers health."""
    server, operator = operator_server
    nc = await nats.connect(server.url, user_credentials=_credentials(operator), connect_timeout=5)
    host = HostControl(nc)
    provider = ProviderIdentity("authed-provider")
    data = replace(
        host.host_data(provider, nats_url=server.url),
        lattice_rpc_user_jwt=operator.user_jwt,
        lattice_rpc_user_seed=operator.user_seed,
    )
    process = ProviderProcess(launcher)
    await process.start(data)
    try:
        await host.wait_healthy(provider, WAIT)
        assert await host.shutdown(provider) == b"shutting down"
        assert await process.wait(WAIT) == 0
        assert operator.user_seed not in process.output
    finally:
        await process.kill()
        await nc.close()


async def test_provider_without_credentials_is_refused_and_says_so(
    operator_server: tuple[NatsServer, Operator], launcher: Path
) -> None:
    """No credentials: the server refuses, and the provider exits 1 at once with the server's reason."""
    server, operator = operator_server
    nc = await nats.connect(server.url, user_credentials=_credentials(operator), connect_timeout=5)
    process = ProviderProcess(launcher)
    await process.start(HostControl(nc).host_data(ProviderIdentity("anon"), nats_url=server.url))
    try:
        assert await process.wait(WAIT) == 1
        assert "refused the connection" in process.output
        assert "Authorization Violation" in process.output
    finally:
        await process.kill()
        await nc.close()
