"""The server's front (api/front.py): the buffered-bytes budget, streamed bodies, exit hooks.

Pure pieces, driven without a server; the real server's behaviour under slow, idle and
flooding clients is tests/reliability/test_slow_clients.py.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from api.front_body import BodyReader, BodyTimeout, Budget, StreamedBody

MB = 1024 * 1024


def readers(budget: Budget, *clients: str) -> list[BodyReader]:
    made = [BodyReader(client, None) for client in clients]
    for reader in made:
        budget.join(reader)
    return made


def test_at_the_cap_the_reader_that_waited_longest_is_evicted():
    """Check that bytes over the worker's cap evict the oldest readers, not the newest."""
    budget = Budget(limit=3 * MB, per_client=3 * MB)
    old, middle, new = readers(budget, "a", "b", "c")
    budget.add(old, MB)
    budget.add(middle, MB)
    budget.add(new, MB)
    assert budget.total == 3 * MB and not any(r.evicted for r in (old, middle, new))
    budget.add(new, MB // 2)
    assert old.evicted and not middle.evicted and not new.evicted
    assert budget.total == 2 * MB + MB // 2 == middle.held + new.held


def test_one_client_over_its_share_evicts_its_own_oldest_body():
    """Check that a client over its quarter loses its own oldest body, not another's."""
    budget = Budget(limit=8 * MB, per_client=2 * MB)
    other, first, second = readers(budget, "b", "a", "a")
    budget.add(other, MB)
    budget.add(first, MB)
    budget.add(second, 1.5 * MB)  # type: ignore[arg-type]
    assert first.evicted and not second.evicted and not other.evicted
    assert budget.total == other.held + second.held


def test_a_single_body_over_the_cap_is_the_one_refused():
    """Check that the reader itself is refused (BodyTimeout) when it alone is over the cap."""
    budget = Budget(limit=MB, per_client=MB)
    (alone,) = readers(budget, "a")
    with pytest.raises(BodyTimeout):
        budget.add(alone, 2 * MB)
    assert budget.total == 0


def test_leaving_gives_the_bytes_back_once():
    """Check that leave() returns a reader's bytes, and a second leave() changes nothing."""
    budget = Budget(limit=4 * MB, per_client=4 * MB)
    a, b = readers(budget, "a", "a")
    budget.add(a, MB)
    budget.add(b, MB)
    budget.leave(a)
    budget.leave(a)
    assert budget.total == MB == b.held


def streamed(pieces: list[bytes], prefix: bytes = b"") -> tuple[StreamedBody, threading.Thread]:
    """A StreamedBody fed from a loop on another thread, as the server's worker does."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    queue = list(pieces)

    async def pull() -> bytes:
        return queue.pop(0) if queue else b""

    return StreamedBody(prefix, pull, loop), thread


def test_a_streamed_body_reads_in_pieces_and_lines_as_a_file_does():
    """Check read(n), readline() and read() over pieces that split lines anywhere."""
    body, _ = streamed([b"a,b\n1,", b"2\n3", b",4\n"], prefix=b"x,y\n")
    assert body.readline() == b"x,y\n"
    assert body.read(2) == b"a,"
    assert body.readline() == b"b\n"
    assert body.readline() == b"1,2\n"
    assert body.read() == b"3,4\n"
    assert body.read() == b""


def test_a_streamed_body_that_stops_arriving_is_a_408():
    """Check that a pull that times out reaches the app as werkzeug's RequestTimeout."""
    from werkzeug.exceptions import RequestTimeout

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def late() -> bytes:
        raise BodyTimeout

    with pytest.raises(RequestTimeout):
        StreamedBody(b"", late, loop).read()
