"""The index from stream to live connections."""

from __future__ import annotations

from notifyd.core.index import StreamIndex


def test_index_tracks_streams() -> None:
    index: StreamIndex[str] = StreamIndex()
    assert index.add("a", ["user:u1", "all"]) == ["user:u1", "all"]
    assert index.add("b", ["user:u1", "all"]) == []
    assert index.subscribers("user:u1") == {"a", "b"}
    assert index.remove("a", ["user:u1", "all", "never"]) == []
    assert index.remove("b", ["user:u1", "all"]) == ["user:u1", "all"]
    assert not index.subscribers("all") and not index.subscribers("user:u1")
