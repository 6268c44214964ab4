"""The log handler: the lines an event loop logs in one turn leave in one write, in order."""

from __future__ import annotations

import asyncio
import logging
import threading

from app.logs import TurnBufferedHandler


class RecordingStream:
    def __init__(self) -> None:
        self.writes: list[str] = []
        self.flushes = 0

    def write(self, text: str) -> None:
        self.writes.append(text)

    def flush(self) -> None:
        self.flushes += 1


def handler_and_logger() -> tuple[TurnBufferedHandler, RecordingStream, logging.Logger]:
    """A handler on a stream that records its writes, and a logger of its own that uses it."""
    stream = RecordingStream()
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test-logs-{id(handler)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.handlers = [handler]
    return handler, stream, logger


def test_the_lines_of_one_turn_go_out_in_one_write_at_its_end() -> None:
    _, stream, log = handler_and_logger()

    async def run() -> None:
        log.info("one")
        log.info("two")
        assert stream.writes == []  # held until the end of the turn
        await asyncio.sleep(0)
        assert stream.writes == ["one\ntwo\n"]
        log.info("three")
        await asyncio.sleep(0)

    asyncio.run(run())
    assert stream.writes == ["one\ntwo\n", "three\n"]


def test_a_line_from_another_thread_goes_out_at_once_after_the_held_ones() -> None:
    _, stream, log = handler_and_logger()

    async def run() -> None:
        log.info("held")
        thread = threading.Thread(target=log.warning, args=("from a worker",))
        thread.start()
        thread.join()
        assert stream.writes == ["held\n", "from a worker\n"]

    asyncio.run(run())


def test_lines_held_when_a_loop_ends_are_written_by_the_next_flush() -> None:
    """A loop that closes before its turn ends (the server's last lines): logging.shutdown at
    exit flushes every handler, and a line on a later loop does too."""
    handler, stream, log = handler_and_logger()

    def last_words() -> None:
        loop.stop()  # this turn is the loop's last
        log.info("finished")

    loop = asyncio.new_event_loop()
    loop.call_soon(last_words)
    loop.run_forever()
    loop.close()  # the flush it had scheduled never ran
    assert "".join(stream.writes) == ""

    async def later() -> None:
        log.info("finished")

    asyncio.run(later())
    assert "".join(stream.writes) == "finished\nfinished\n"
    log.info("no loop")
    handler.flush()
    assert "".join(stream.writes) == "finished\nfinished\nno loop\n"
