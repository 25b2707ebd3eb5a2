"""chat: every message goes to every session; joins and leaves are announced.

Linked in server mode with ``LIFECYCLE_EVENTS=true``, it receives

* ``ws.connected`` when a client joins: it sends that client ``{"type": "welcome", "you": name}``
  and everyone ``{"type": "join", "who": name}``;
* ``ws.disconnected`` when a client leaves: everyone gets ``{"type": "leave", "who": name}``;
* any other subject: everyone gets ``{"type": "message", "from": name, "text": body}``.

Everything it sends is a JSON text body, published to ``ws.broadcast`` (all sessions of
the servers that deliver to it) or to the client's own reply subject. A client's name
is derived from its session id, so the component keeps no state between messages (any
of its instances can handle any message) and never shows a session id to others.

The same component runs on a wasmCloud 2.x host behind the bridge (``make run-v2``), whose
lifecycle events are ``ws.event.connected`` / ``ws.event.disconnected`` and whose client
frames arrive on ``ws.in.<subject>``: subscribe it to ``ws.in.>,ws.event.>``.
"""

import hashlib
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import consumer
from wit_world.imports.types import BrokerMessage

BROADCAST = "ws.broadcast"
CONNECTED = ("ws.connected", "ws.event.connected")  # server mode, the v2 bridge
DISCONNECTED = ("ws.disconnected", "ws.event.disconnected")
SESSION = "ws.session."
MAX_TEXT = 2000
"""Characters of a message that are passed on; the rest is cut."""


def name_of(reply_to: str) -> str:
    """A short, stable name for a session; a one-way hash, as the session id is its only key."""
    return "guest-" + hashlib.sha256(reply_to.encode()).hexdigest()[:6]


def send(subject: str, event: dict) -> None:
    consumer.publish(BrokerMessage(subject, json.dumps(event).encode(), None))


class Handler(exports.Handler):
    def handle_message(self, msg: BrokerMessage) -> None:
        if msg.reply_to is None or not msg.reply_to.startswith(SESSION):
            raise Err("chat takes messages from WebSocket sessions (reply-to ws.session.<id>)")
        who = name_of(msg.reply_to)
        if msg.subject in CONNECTED:
            send(msg.reply_to, {"type": "welcome", "you": who})
            send(BROADCAST, {"type": "join", "who": who})
        elif msg.subject in DISCONNECTED:
            send(BROADCAST, {"type": "leave", "who": who})
        else:
            text = msg.body.decode("utf-8", errors="replace")[:MAX_TEXT]
            send(BROADCAST, {"type": "message", "from": who, "text": text})
