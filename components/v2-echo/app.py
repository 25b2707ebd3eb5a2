"""v2-echo: a wasmCloud 2.x component behind the WebSocket bridge (``python -m provider bridge``).

Run by a v2 host (``wash dev``) with the messaging plugin's ``subscriptions`` set to
``ws.in.>``: the bridge publishes each client frame with subject ``s`` on ``ws.in.s``, reply
subject = the client's session subject ``ws.session.<id>``. What it does with a frame, by
the client's subject ``s``:

===============  ==========================================================================
``broadcast``    publishes the body to ``ws.broadcast``: every session of every bridge gets it
``sessions``     requests ``ws.sessions`` (the bridges' gathered list) and sends the answer
                 back to the client
``close``        publishes the body (the close reason) to ``ws.close.<id>``: the client is
                 closed with 1000
``fail``         returns ``err`` (the v2 host logs it; nothing reaches the client)
anything else    echoes the body back to the client (publish to its reply subject)
===============  ==========================================================================

It keeps no state: the v2 host runs every message in a fresh instance.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import consumer
from wit_world.imports.types import BrokerMessage

IN = "ws.in."
SESSION = "ws.session."
CLOSE = "ws.close."
BROADCAST = "ws.broadcast"
SESSIONS = "ws.sessions"
REQUEST_TIMEOUT_MS = 5000


class Handler(exports.Handler):
    def handle_message(self, msg: BrokerMessage) -> None:
        if msg.reply_to is None:
            raise Err(f"{msg.subject}: nothing to answer, the message has no reply subject")
        command = msg.subject[len(IN) :] if msg.subject.startswith(IN) else msg.subject
        if command == "broadcast":
            consumer.publish(BrokerMessage(BROADCAST, msg.body, None))
        elif command == "sessions":
            answer = consumer.request(SESSIONS, b"", REQUEST_TIMEOUT_MS)
            consumer.publish(BrokerMessage(msg.reply_to, answer.body, None))
        elif command == "close":
            if not msg.reply_to.startswith(SESSION):
                raise Err(f"{msg.reply_to!r} is not a session subject")
            consumer.publish(BrokerMessage(CLOSE + msg.reply_to[len(SESSION) :], msg.body, None))
        elif command == "fail":
            raise Err("failing on request (the client sent subject 'fail')")
        else:
            consumer.publish(BrokerMessage(msg.reply_to, msg.body, None))
