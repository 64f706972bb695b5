"""notifyd.core.codes: the close codes, error codes and auth refusal reasons, and the errors
that carry them (their agreement with protocol/README.md is held in test_protocol_docs.py)."""

from __future__ import annotations

import re

from notifyd.core.codes import AuthReason, CloseCode, ErrorCode, close_label


def test_close_codes_are_rfc_or_private_codes() -> None:
    for code in CloseCode:
        assert 1000 <= code <= 1015 or 4000 <= code <= 4999, code  # RFC 6455 §7.4.2
        assert code.meaning


def test_close_codes_sent_by_notifyd_itself_are_documented() -> None:
    sent = (
        CloseCode.GOING_AWAY,  # shutdown
        CloseCode.INVALID_DATA,  # a text message that is not UTF-8
        CloseCode.POLICY_VIOLATION,  # rate limit, too many connections
        CloseCode.INTERNAL_ERROR,  # keepalive
        CloseCode.UNAUTHORIZED,
        CloseCode.REVOKED,
        CloseCode.TOO_SLOW,
    )
    assert all(code.documented for code in sent)
    assert not CloseCode.ABNORMAL_CLOSURE.documented  # never on the wire


def test_close_labels() -> None:
    labels = [code.metric_label for code in CloseCode]
    assert len(set(labels)) == len(labels)
    assert close_label(CloseCode.TOO_SLOW) == "4008"
    assert close_label(1000) == "1000"
    assert close_label(1006) == "1006"
    assert close_label(3000) == close_label(4999) == close_label(1004) == "other"


def test_error_codes_are_kebab_case_wire_strings() -> None:
    for code in ErrorCode:
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", code.value), code
        assert code == code.value and str(code) == code.value  # it is its wire string
        assert code.description


def test_error_statuses() -> None:
    for code in ErrorCode:
        assert 400 <= code.status < 600, code
    assert ErrorCode.INVALID_DATA.status == 400
    assert ErrorCode.AUTH_FAILED.status == 401
    assert ErrorCode.FORBIDDEN.status == 403
    assert ErrorCode.TOO_MANY_REQUESTS.status == 429
    assert ErrorCode.INTERNAL_ERROR.status == 500
    assert ErrorCode.UNAVAILABLE.status == 503
    server_faults = {c for c in ErrorCode if c.status >= 500}
    assert server_faults == {ErrorCode.INTERNAL_ERROR, ErrorCode.UNAVAILABLE}


def test_error_metric_labels_are_unique() -> None:
    labels = [code.metric_label for code in ErrorCode]
    assert len(set(labels)) == len(labels)


def test_auth_reasons_count_under_the_public_labels() -> None:
    assert {r.metric_label for r in AuthReason} == {"expired", "invalid", "revoked"}
    assert AuthReason.EXPIRED.metric_label == "expired"
    assert AuthReason.REVOKED.metric_label == "revoked"
    others = set(AuthReason) - {AuthReason.EXPIRED, AuthReason.REVOKED}
    assert {r.metric_label for r in others} == {"invalid"}
