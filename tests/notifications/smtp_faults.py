"""A real SMTP server (aiosmtpd) that can misbehave on purpose: refuse, stall past the client's
timeout, or drop the connection after it received the whole message (the answer is lost)."""

from __future__ import annotations

import asyncio
import email
import socket
import threading
from collections import Counter
from typing import Any

from aiosmtpd.controller import Controller

MODES = ("ok", "refuse", "refuse_permanently", "stall", "drop_after_data", "hold")


class FaultySmtp:
    def __init__(self, stall_seconds: float = 2.0) -> None:
        self.mode = "ok"
        self.stall_seconds = stall_seconds
        self.received: list[email.message.Message] = []
        self.held = threading.Event()  # set when a message is being held ("hold" mode)
        self.lock = threading.Lock()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    # -- aiosmtpd handler ----------------------------------------------------------------------

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mode = self.mode
        if mode == "refuse":
            return "451 4.3.0 Try again later"
        if mode == "refuse_permanently":
            return "550 5.1.1 No such mailbox"
        if mode == "hold":
            # NOTE: the whole message has arrived, but no answer comes (and it is not kept):
            # a sender killed now has sent nothing.
            self.held.set()
            await asyncio.sleep(60)
            return "451 4.3.0 Too late"
        message = email.message_from_bytes(envelope.original_content or envelope.content)
        with self.lock:
            self.received.append(message)
        if mode == "stall":
            # NOTE: the message is kept, but the answer comes after the client gave up.
            await asyncio.sleep(self.stall_seconds)
        elif mode == "drop_after_data":
            server.transport.close()  # kept, and the "250" never reaches the client
        return "250 OK"

    # -- control -------------------------------------------------------------------------------

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def config(self, timeout: float = 1.0) -> dict[str, Any]:
        return {
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": self.port,
            "MAIL_USE_TLS": False,
            "MAIL_TIMEOUT_SECONDS": timeout,
        }

    def message_ids(self) -> Counter[str]:
        with self.lock:
            return Counter(str(m["Message-ID"]) for m in self.received)
