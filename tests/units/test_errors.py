"""The exception tree: what each error carries (its code, status, default message)."""

from __future__ import annotations

import orjson
import pytest

from notifyd.core.codes import AuthReason, ErrorCode
from notifyd.core.errors import AuthError, ClientError
from notifyd.core.protocol import error_frame


def test_client_error_carries_its_code_status_and_default_message() -> None:
    exc = ClientError(ErrorCode.SYNC_IN_PROGRESS)
    assert exc.code is ErrorCode.SYNC_IN_PROGRESS
    assert exc.message == str(exc) == ErrorCode.SYNC_IN_PROGRESS.description
    assert ClientError(ErrorCode.UNAVAILABLE).status == 503
    named = ClientError(ErrorCode.INVALID_DATA, "data.limit: expected an integer")
    assert named.message == "data.limit: expected an integer" and named.status == 400
    named.ref = "r1"
    assert orjson.loads(error_frame(named)) == {
        "type": "error",
        "data": {"code": "invalid-data", "message": "data.limit: expected an integer"},
        "ref": "r1",
    }


def test_client_error_takes_only_documented_codes() -> None:
    assert ClientError("forbidden").code is ErrorCode.FORBIDDEN  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="undocumented"):
        ClientError("made-up")  # type: ignore[arg-type]


def test_auth_error_message_and_status() -> None:
    exc = AuthError(AuthReason.EXPIRED)
    assert str(exc) == "token expired" and exc.reason is AuthReason.EXPIRED
    assert exc.code is ErrorCode.AUTH_FAILED and exc.status == 401
    named = AuthError(AuthReason.NO_USER, "token lacks the 'uid' claim")
    assert str(named) == "token lacks the 'uid' claim" and named.reason is AuthReason.NO_USER
