"""faulty (tests only): echoes like components/echo, but fails on purpose on some subjects.

``trap``: raises an exception that is not ``Err``, which traps the instance;
``spin``: loops forever, until the host's fuel limit traps it;
``fail``: returns ``result::err`` (the instance lives on).
"""

from componentize_py_types import Err  # type: ignore[import-not-found]
from wit_world import exports  # type: ignore[import-not-found]
from wit_world.imports import consumer  # type: ignore[import-not-found]
from wit_world.imports.types import BrokerMessage  # type: ignore[import-not-found]


class Handler(exports.Handler):  # type: ignore[misc]
    def handle_message(self, msg: BrokerMessage) -> None:
        if msg.subject == "trap":
            raise RuntimeError("trapping on purpose")
        if msg.subject == "spin":
            while True:
                pass
        if msg.subject == "fail":
            raise Err("failing on purpose")
        if msg.reply_to is None:
            raise Err("nothing to answer: the message has no reply-to")
        consumer.publish(BrokerMessage(msg.reply_to, msg.body, None))
