"""echo: answers every message by publishing its body to the message's reply-to.

Link it in server mode and each WebSocket client gets its own frames back; in client
mode the frame goes back on the connection it came from.
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import consumer
from wit_world.imports.types import BrokerMessage


class Handler(exports.Handler):
    def handle_message(self, msg: BrokerMessage) -> None:
        if msg.reply_to is None:
            raise Err("nothing to answer: the message has no reply-to")
        consumer.publish(BrokerMessage(msg.reply_to, msg.body, None))
