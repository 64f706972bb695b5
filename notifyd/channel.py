"""Payloads of the NOTIFY channel: which ones to trust.

NOTIFY needs no privilege, so a payload is a claim until shown otherwise. Every genuine payload
is signed in the database (notifyd_private.send_events, sql/0004_signed_events.sql):

    <64 hex digits: HMAC-SHA256 of the body> {"k": key id, "i": nonce, "e": [events]}

with a key only the schema's owner can read, and numbered by a sequence. `Channel.open()`
returns the events of a payload whose signature verifies and whose nonce it has not seen, and
refuses (and counts) the rest:

- ``malformed``: not a signed payload at all;
- ``unknown-key``: signed with a key this process does not hold;
- ``signature``: the signature does not match (forged, or a genuine payload modified);
- ``replayed``: a nonce already seen (a genuine payload sent again).

Nonces are remembered in a window of the last `window` nonces. A payload older than the window,
or numbered before this process started listening, is *stale*: genuine, but possibly a replay
whose first copy was not seen. Its events are then re-checked against the tables instead of
trusted (fanout.Router.feed does that). Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

MAC_LENGTH = 64  # hex digits of HMAC-SHA256
NONCE_WINDOW = 1 << 22  # nonces remembered: 512 KiB of bits, over an hour at 1,000 payloads/s
REFUSALS = ("malformed", "unknown-key", "signature", "replayed")


@dataclass(frozen=True, slots=True)
class Opened:
    """A payload that verified: its events, and whether they must be re-checked (stale)."""

    events: list[dict[str, Any]]
    stale: bool


class Channel:
    """Verifies payloads; keeps the keys and the nonces seen."""

    def __init__(self, window: int = NONCE_WINDOW) -> None:
        if window <= 0 or window % 8:
            raise ValueError("the nonce window is a positive multiple of 8")
        self._window = window
        self._keys: dict[int, bytes] = {}
        self._seen = bytearray(window // 8)  # bit (nonce % window): seen, for nonces in window
        self._high = 0  # the highest nonce seen, or the floor set by listening_from()
        self._floor = 0  # nonces at or below it are stale
        self.refused: Counter[str] = Counter()
        self.stale = 0  # payloads opened as stale

    def set_keys(self, keys: dict[int, bytes]) -> None:
        """The keys of notifyd_private.channel_keys (read at LISTEN and on every probe)."""
        self._keys = dict(keys)

    def listening_from(self, nonce: int) -> None:
        """LISTEN (again) with the nonce sequence at `nonce`: a payload numbered up to it was
        signed before this process listened, so a first copy of it may have gone unseen."""
        if nonce < self._high:
            # The sequence went back: another database (restored, or replaced behind the same
            # address). What was seen of the old one says nothing of the new one's nonces.
            self._seen[:] = bytes(len(self._seen))
            self._high = self._floor = nonce
            return
        self._advance(nonce)
        self._floor = max(self._floor, nonce)

    def open(self, payload: str) -> Opened | str:
        """The verified events of `payload`, or the reason it is refused (counted)."""
        reason = self._check(payload)
        if isinstance(reason, str):
            self.refused[reason] += 1
        return reason

    def _check(self, payload: str) -> Opened | str:
        mac, body = payload[:MAC_LENGTH], payload[MAC_LENGTH:]
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return "malformed"
        if not isinstance(parsed, dict):
            return "malformed"
        key_id, nonce, events = parsed.get("k"), parsed.get("i"), parsed.get("e")
        if (type(key_id) is not int or type(nonce) is not int or nonce < 1
                or not isinstance(events, list)):
            return "malformed"
        key = self._keys.get(key_id)
        if key is None:
            return "unknown-key"
        expected = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(mac, expected):
            return "signature"
        # Signed by the database from here on: the events are well-formed dicts.
        if nonce <= self._floor or nonce <= self._high - self._window:
            self.stale += 1
            return Opened(events, stale=True)
        byte, bit = divmod(nonce % self._window, 8)
        if nonce <= self._high and self._seen[byte] >> bit & 1:
            return "replayed"
        self._advance(nonce)
        self._seen[byte] |= 1 << bit
        return Opened(events, stale=False)

    def _advance(self, nonce: int) -> None:
        """Make `nonce` the highest: the bits of the nonces it passes over start unseen."""
        if nonce <= self._high:
            return
        if nonce - self._high >= self._window:
            self._seen[:] = bytes(len(self._seen))
        else:
            for passed in range(self._high + 1, nonce + 1):
                byte, bit = divmod(passed % self._window, 8)
                self._seen[byte] &= ~(1 << bit) & 0xFF
        self._high = nonce
