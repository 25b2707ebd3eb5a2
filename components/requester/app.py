"""requester: turns each message into a request to an outside service and delivers the answer.

Meant for client mode: the provider connects out to a WebSocket service for it (its
handler and consumer links both ``MODE=client``, same ``URI``). For every message it
receives, it calls ``consumer.request`` with the message's subject and body (the provider
sends an envelope whose ``reply_to`` is a fresh correlation subject, and returns the
frame the service sends back to that subject), then publishes the answer's body to the
message's reply-to. If the request fails, the reply-to gets ``error: <reason>`` instead.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import consumer
from wit_world.imports.types import BrokerMessage

TIMEOUT_MS = 5000


class Handler(exports.Handler):
    def handle_message(self, msg: BrokerMessage) -> None:
        if msg.reply_to is None:
            raise Err("nothing to answer: the message has no reply-to")
        try:
            answer = consumer.request(msg.subject, msg.body, TIMEOUT_MS)
        except Err as failed:
            consumer.publish(BrokerMessage(msg.reply_to, f"error: {failed.value}".encode(), None))
            raise
        consumer.publish(BrokerMessage(msg.reply_to, answer.body, None))
