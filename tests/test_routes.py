"""The table of client operations (notifyd.operations.ROUTES) against what the protocol offers:
every client frame is served on a WebSocket, every HTTP endpoint that protocol/README.md §10
documents is served by the HTTP API, and nothing else is."""

from __future__ import annotations

import functools
import re
import typing

from support import ROOT

from notifyd.core import protocol
from notifyd.operations import BY_EVENT, BY_HTTP, ROUTES

# Answered by hub.py itself, without an operation: the token (first or fresh) and ping.
HUB_ONLY = {protocol.Auth, protocol.Ping}


def _decoded(decode: object) -> type:
    """The class a decoder returns (the state changes' one decoder takes it as its argument)."""
    if isinstance(decode, functools.partial):
        return typing.cast(type, decode.args[0])
    return typing.cast(type, typing.get_type_hints(decode)["return"])


def test_every_client_frame_has_its_operation() -> None:
    decoded = {_decoded(decode) for _, decode in protocol._DECODERS.values()}
    assert decoded == set(BY_EVENT) | HUB_ONLY
    assert all(route.answer for route in ROUTES)


def test_the_http_api_serves_what_the_protocol_documents() -> None:
    text = (ROOT / "protocol" / "README.md").read_text()
    section = text[text.index("## 10.") :]
    documented = set(re.findall(r"^\| `(GET|POST) (/v1/[a-z/-]+)", section, re.MULTILINE))
    assert documented == set(BY_HTTP)
    for route in BY_HTTP.values():
        assert route.from_query is not None
