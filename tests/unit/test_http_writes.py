"""An answer's head and body leave in one socket write (issue 10), in order, nothing held back."""

from __future__ import annotations

import asyncio
from typing import Any

from difflane.api.http_server import _MAX_HELD_BYTES, _OneWritePerAnswer


class Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else None


def test_writes_of_one_turn_go_out_together_in_order() -> None:
    async def main() -> Transport:
        real = Transport()
        out = _OneWritePerAnswer(real)  # type: ignore[arg-type]
        out.write(b"HTTP/1.1 202 Accepted\r\n\r\n")
        out.write(b"{}")
        assert real.writes == []  # not yet: the turn is not over
        await asyncio.sleep(0)
        out.write(b"next")
        await asyncio.sleep(0)
        assert out.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's own
        return real

    assert asyncio.run(main()).writes == [b"HTTP/1.1 202 Accepted\r\n\r\n{}", b"next"]


def test_close_sends_what_waits_first_and_a_large_write_is_not_held() -> None:
    async def main() -> Transport:
        real = Transport()
        out = _OneWritePerAnswer(real)  # type: ignore[arg-type]
        out.write(b"x" * (_MAX_HELD_BYTES + 1))
        assert len(real.writes) == 1
        out.write(b"last")
        out.close()
        assert real.closed
        await asyncio.sleep(0)
        return real

    assert asyncio.run(main()).writes[1:] == [b"last"]
