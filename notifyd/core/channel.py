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
trusted (notifyd.core.fanout.stale_claims says which, notifyd.storage.pipeline checks them).

The events of a payload that verified are decoded here, into notifyd.core.events' classes
(sql/EVENTS.md has their format); a genuine payload that cannot be decoded opens as `resync`.
Pure: no I/O, no clock; imports no asyncio, asyncpg, redis or socket.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from dataclasses import dataclass

import orjson

from notifyd.core.errors import MalformedEvents
from notifyd.core.events import Event, decode

MAC_LENGTH = 64  # hex digits of HMAC-SHA256
NONCE_WINDOW = 1 << 22  # nonces remembered: 512 KiB of bits, over an hour at 1,000 payloads/s
STALE_KEPT = 65536  # stale nonces remembered, so that a stale payload counts once
_HEX = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r'\{"k":(\d{1,9}),')
REFUSALS = ("malformed", "unknown-key", "signature", "replayed")


@dataclass(frozen=True, slots=True)
class Opened:
    """A payload that verified: its events, and whether they must be re-checked (stale)."""

    events: list[Event]
    stale: bool
    resync: bool = False  # genuine but undecodable: catch the streams up from the tables


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
        self.undecodable = 0  # genuine payloads the parser could not read
        self._stale_seen: set[int] = set()  # stale nonces met since they were last cleared

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
            self._stale_seen.clear()
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
        mac = payload[:MAC_LENGTH]
        if len(mac) < MAC_LENGTH or not _HEX.fullmatch(mac):
            return "malformed"
        # The signature is checked on the bytes before anything is parsed: a payload that
        # verifies is the database's, whatever its body holds.
        body = payload[MAC_LENGTH:]
        raw = body.encode()
        key_id = next(
            (
                k
                for k, key in self._keys.items()
                if hmac.compare_digest(mac, hmac.new(key, raw, hashlib.sha256).hexdigest())
            ),
            None,
        )
        if key_id is None:
            claimed = _key_of(body)
            if claimed is None:
                return "malformed"
            return "signature" if claimed in self._keys else "unknown-key"
        try:
            parsed = orjson.loads(raw)
            nonce, events = parsed["i"], parsed["e"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return self._undecodable()
        if nonce <= self._floor or nonce <= self._high - self._window:
            if nonce in self._stale_seen:
                return "replayed"
            if len(self._stale_seen) >= STALE_KEPT:
                self._stale_seen.clear()  # forgotten: a later copy is re-checked, not trusted
            self._stale_seen.add(nonce)
            self.stale += 1
            return self._decoded(events, stale=True)
        byte, bit = divmod(nonce % self._window, 8)
        if nonce <= self._high and self._seen[byte] >> bit & 1:
            return "replayed"
        self._advance(nonce)
        self._seen[byte] |= 1 << bit
        return self._decoded(events, stale=False)

    def _decoded(self, events: object, stale: bool) -> Opened:
        try:
            return Opened(decode(events), stale=stale)
        except MalformedEvents:
            return self._undecodable()

    def _undecodable(self) -> Opened:
        """Genuine but beyond the parser (a row's data nested too deep), or events not as the
        triggers send them: they are lost to this path, so the streams are caught up from the
        tables instead."""
        self.undecodable += 1
        return Opened([], stale=True, resync=True)

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


def _key_of(body: str) -> int | None:
    """The key id a payload claims (for the reason of a refusal), or None: not one of ours."""
    match = _KEY_ID.match(body)
    return int(match[1]) if match else None
