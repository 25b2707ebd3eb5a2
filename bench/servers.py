"""The processes ``bench.ws`` measures, each run on its own so every one gets a core of its own.

``python -m bench.servers bare PORT``
    the baseline: a bare ``websockets`` server that echoes every frame, and broadcasts the
    ``bench.broadcast`` trigger to every connection — the best a Python WebSocket server does alone.
``python -m bench.servers component NATS_URL PROVIDER_ID``
    configuration 2's component: plain Python served over wRPC on NATS (no wasm), echoing
    every message to its reply-to and answering the trigger with a publish to ``ws.broadcast``.

Both print ``ready`` once they serve, and stop when stdin closes.
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

from bench.load import MAX_FRAME
from provider.host.native import NativeComponent, echo
from provider.process import keep_read_buffers_on_the_heap
from provider.wrpc.connection import connect as connect_nats
from provider.wrpc.messaging import BrokerMessage, UnitResult
from provider.wrpc.nats import WrpcTransport

TRIGGER = '"subject": "bench.broadcast"'
COMPONENT_ID = "bench-echo"


async def _until_stdin_closes() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def bare(port: int) -> None:
    connections: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        connections.add(ws)
        try:
            async for message in ws:
                if isinstance(message, str) and TRIGGER in message:
                    broadcast(connections, message)
                else:
                    await ws.send(message)
        finally:
            connections.discard(ws)

    # websockets' defaults (keepalive pings included), compression off as in the provider, and
    # frames up to MAX_FRAME as the provider's MAX_MESSAGE_BYTES is set in bench.ws
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=MAX_FRAME):
        print("ready", flush=True)
        await _until_stdin_closes()


async def component(nats_url: str, provider_id: str) -> None:
    nc = await connect_nats(nats_url)
    transport = WrpcTransport(nc)
    await transport.start()

    async def on_message(self: NativeComponent, msg: BrokerMessage) -> UnitResult:
        if msg.subject == "bench.broadcast":
            return await self.publish(BrokerMessage("ws.broadcast", msg.body, None))
        return await echo(self, msg)

    native = NativeComponent(transport, COMPONENT_ID, provider_id, on_message)
    await native.start()
    print("ready", flush=True)
    await _until_stdin_closes()
    await native.close()
    await transport.close()
    await nc.close()


def main() -> None:
    kind, *args = sys.argv[1:]
    if kind == "bare":
        asyncio.run(bare(int(args[0])))
    elif kind == "component":
        keep_read_buffers_on_the_heap()  # as the provider does (and a host process would)
        asyncio.run(component(args[0], args[1]))
    else:
        raise SystemExit(f"unknown server kind {kind!r}")


if __name__ == "__main__":
    main()
