"""Fakes shared by the unit tests: a live session, a connection that keeps what it is given."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from notifyd import config
from notifyd.core.auth import Authenticator, issue_token
from notifyd.core.events import Event, decode
from notifyd.core.session import Session

SECRET = "unit-secret-" + "z" * 40


def live_session(connection_id: str = "c1") -> Session:
    s = Session(connection_id)
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

    def decoded(self) -> list[dict[str, object]]:
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


def events_of(text: str) -> list[Event]:
    """The events of a payload body (its "e" list), as channel.Channel.open() decodes them."""
    return decode(orjson.loads(text))
