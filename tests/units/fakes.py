"""Fakes shared by the unit tests: a live session, a connection that keeps what it is given,
token claims, signed NOTIFY payloads and the role spellings that case mappings disagree on.

Imports nothing that does I/O: tests/ may import it, never the reverse."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from notifyd.core.auth import Authenticator, issue_token
from notifyd.core.events import Event, decode
from notifyd.core.session import Session
from notifyd.core.settings import parse

SECRET = "unit-secret-" + "z" * 40

# Role spellings on which case mappings disagree: Python's str.lower(), PostgreSQL's lower()
# under C.UTF-8, under LC_CTYPE 'C' and under an ICU Turkish locale all differ on some of these.
KELVIN = "\u212a"  # K, the Kelvin sign: Python and ICU lower it to an ASCII k
ROLE_CASES = [
    "admin",
    "Admin",
    "ADMIN",
    "IT",
    "it",
    "\u0130T",
    "i\u0307t",
    "\u0131t",
    "\u00c4RZTE",
    "\u00e4rzte",
    "STRASSE",
    "stra\u00dfe",
    "\u00df",
    KELVIN,
    "k",
    f"{KELVIN}ELVIN",
    "\ufb00",
    "org:42/Team_Lead+x",
    "a b",
    " admin",
    "tab\tx",
    "x" * 128,
    "X" * 129,
    "!~",
    "'quote'",
    "back\\slash",
    "null\x00byte",
    "",
]


def live_session(connection_id: str = "c1") -> Session:
    s = Session(connection_id)
    auth = Authenticator(parse({"jwt_secret": SECRET}))
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


def events_of(text: str) -> list[Event]:
    """The events of a payload body (its "e" list), as channel.Channel.open() decodes them."""
    return decode(orjson.loads(text))


def token_claims(**kw: object) -> dict[str, object]:
    """A token's claims for user 42, valid for 10 minutes; a claim given as None is left out."""
    claims: dict[str, object] = {"sub": "42", "exp": int(time.time()) + 600}
    claims.update(kw)
    return {k: v for k, v in claims.items() if v is not None}


def signed_payload(key: bytes, key_id: int, nonce: int, events: list[dict[str, object]]) -> str:
    """A NOTIFY payload as the database signs it: HMAC-SHA256 hex, then the body."""
    body = orjson.dumps({"k": key_id, "i": nonce, "e": events}).decode()
    return hmac.new(key, body.encode(), hashlib.sha256).hexdigest() + body
