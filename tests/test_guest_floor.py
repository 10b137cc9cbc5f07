"""guest.agent.floor: the freshness floor's file format, pure (bytes in, bytes out)."""

from __future__ import annotations

from guest.agent import floor


def test_round_trip_check_and_advance() -> None:
    floors = {"r/p:latest": 20, "r/q:1": 5}
    data = floor.dump(floors)
    assert floor.parse(data) == floors and floor.dump(floor.parse(data)) == data
    assert not floor.check(floors, "r/p:latest", 20).stale  # the same publication again
    assert floor.check(floors, "r/p:latest", 19).stale
    assert floor.check(floors, "r/p:latest", None).stale  # unversioned counts as 0
    assert not floor.check(floors, "r/new:1", None).stale  # no floor yet
    assert floor.advanced(floors, {"r/p:latest": 10}) == {"r/p:latest": 10, "r/q:1": 5}


def test_hostile_or_broken_files_read_as_no_floor() -> None:
    for data in (None, b"", b"{", b"[]", b'{"floors": 3}', b"\xff" * 10,
                 b"{" + b" " * floor.MAX_FLOOR_BYTES + b"}"):  # fmt: skip
        assert floor.parse(data) == {}
    odd = b'{"floors": {"a": 1, "b": -1, "c": true, "d": "9", "e": 1.5}}'
    assert floor.parse(odd) == {"a": 1}


def test_the_file_stays_bounded() -> None:
    many = {f"r/p{i}:1": i for i in range(floor.MAX_ENTRIES + 50)}
    kept = floor.parse(floor.dump(many))
    assert len(kept) == floor.MAX_ENTRIES and min(kept.values()) == 50  # oldest forgotten
    assert len(floor.dump(many)) < floor.MAX_FLOOR_BYTES
