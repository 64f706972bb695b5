"""Fakes shared by the unit tests: a live session, a connection that keeps what it is given."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from notifyd import config
from notifyd.core.auth import Authenticator, issue_token
from notifyd.core.session import Session

SECRET = "unit-secret-" + "z" * 40


def live_session() -> Session:
    s = Session("c1")
    auth = Authenticator(config.load({"NOTIFYD_JWT_SECRET": SECRET}))
    s.authenticate(auth.verify(issue_token(SECRET, "1")))
    return s


@dataclass(eq=False)
class FakeConn:
    session: Session
    frames: list[bytes] = field(default_factory=list)
    written: int = 0  # bytes, also those of frames cleared by a test

    def deliver(self, frame: bytes) -> None:
        self.frames.append(frame)
        self.written += len(frame)

    def decoded(self) -> list[dict[str, Any]]:
        """Every frame written, parsed by websockets' own client-side protocol."""
        client = ClientProtocol(parse_uri("ws://x/"), state=OPEN)
        client.receive_data(b"".join(self.frames))
        return [orjson.loads(f.data) for f in client.events_received() if isinstance(f, Frame)]


def wire(stream: str, seq: int, nid: int) -> dict[str, object]:
    return {
        "id": nid,
        "stream": stream,
        "seq": seq,
        "type": "t",
        "title": "",
        "message": "",
        "data": {},
        "priority": "low",
        "actionUrl": None,
        "read": False,
        "readAt": None,
        "createdAt": "2026-01-01T00:00:00.000000Z",
    }


def events_of(text: str) -> list[dict[str, object]]:
    """The events of a payload body, as channel.Channel.open() hands them to the router."""
    events: list[dict[str, object]] = orjson.loads(text)
    return events
