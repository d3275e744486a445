"""One WebSocket client: its audio into a `Recognizer.run`, that run's events back out, then a close.

Three tasks per connection, each owning one direction, joined by two bounded queues:

    socket ─▶ read ─▶ audio queue ─▶ label (Recognizer.run) ─▶ outbox ─▶ send ─▶ socket

Backpressure runs one way only. A full audio queue makes `read` stop reading, so a client that
sends faster than the pipeline labels is slowed by TCP, never buffered. A full outbox, or a send
the client does not take within `serve.send_timeout_s`, means the client stopped reading: it is cut off
(policy close), because waiting would hold the pipeline and buffering would grow the server.

Every way a connection ends is one close code, with the labels of the audio already received
delivered first and the final `stats` (every segment accounted for) last: the client's `end`
(1000), a protocol error, the audio limit or the idle timeout (one `error` event, then 1008), the
server stopping (1001, labelling cut after `DRAIN_S`), or a pipeline failure (1011). Only a client
that stops reading, or goes away, gets nothing more.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from fdrl.config import Serve
from stream.events import Error, Event, Level
from stream.pipeline import Recognizer
from stream.server.protocol import End, ProtocolError, Start, decode_audio, parse_text
from stream.sources import ChunkSource

# After the server is told to stop: time left to label the audio held, then to close. Together
# they fit the 2 s in which `fdrl serve` exits after a signal.
DRAIN_S = 1.4
CLOSE_TIMEOUT_S = 0.3   # a client that does not answer the closing handshake is disconnected after this
# The kernel's send buffer for each client, fixed instead of autotuned (up to megabytes): what a client
# that stops reading can make the server hold, and how soon its sends block (`serve.send_timeout_s`).
SEND_BUFFER_BYTES = 64 * 1024


class SlowReader(Exception):
    """The client stopped reading: its events cannot be delivered without the server holding them."""


@dataclass
class _Ending:
    """How the connection will close: the code and its reason."""

    code: int = CloseCode.NORMAL_CLOSURE
    reason: str = "end of audio"


class Connection:
    """One client, from its first message to the close. Run it with `await Connection(...).run()`."""

    def __init__(self, ws: ServerConnection, recognizer: Recognizer, limits: Serve, stream: str) -> None:
        self.ws, self.recognizer, self.limits, self.stream = ws, recognizer, limits, stream
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        self.audio: asyncio.Queue = asyncio.Queue(maxsize=limits.audio_queue)  # sample blocks, then None
        self.outbox: asyncio.Queue = asyncio.Queue(maxsize=limits.send_queue)  # JSON texts, then None
        self.start: asyncio.Future[Start] = asyncio.get_running_loop().create_future()
        self.received_s = 0.0       # seconds of the client's audio so far: the time of an error event
        self.ending: _Ending | None = None
        self.reader: asyncio.Task | None = None
        self.stopped = asyncio.Event()  # the server is stopping (`stop`)
        self.input_closed = False
        self.overflowed = False     # an event found the outbox full: the client is cut off

    async def run(self) -> None:
        self.reader = asyncio.create_task(self.read())
        labeller = asyncio.create_task(self.label())
        sender = asyncio.create_task(self.send())
        stopped = asyncio.ensure_future(self.stopped.wait())
        try:
            # The sender ends last in a normal close; the reader first only when the client went away.
            while not sender.done():
                await asyncio.wait({sender, self.reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if self.reader.done() and not sender.done():
                    self.reader.result()  # raises ConnectionClosed: nobody left to send to
                if stopped.done() and not sender.done():
                    await asyncio.wait({sender}, timeout=DRAIN_S)
                    if not sender.done():
                        await self.cut_short(labeller, sender)
                        return
            if isinstance(sender.exception(), SlowReader):
                await self.close(CloseCode.POLICY_VIOLATION, "slow reader: events were not read in time")
        except ConnectionClosed:
            pass
        finally:
            for task in (self.reader, labeller, sender, stopped):
                task.cancel()
            await asyncio.gather(self.reader, labeller, sender, stopped, return_exceptions=True)

    def stop(self) -> None:
        """The server is stopping: take no more audio; what is held gets `DRAIN_S` to be labelled."""
        self.end(CloseCode.GOING_AWAY, "server stopping")
        self.stopped.set()
        if not self.start.done():  # connected but silent so far: its run starts, and ends at once
            self.start.set_result(Start())
        with contextlib.suppress(asyncio.QueueFull):  # full: `blocks` sees `stopped` at its next block
            self.audio.put_nowait(None)

    async def cut_short(self, labeller: asyncio.Task, sender: asyncio.Task) -> None:
        """The server stops and the drain ran out: say which audio went unlabelled, then close."""
        for task in (labeller, sender):
            task.cancel()
        await asyncio.gather(labeller, sender, return_exceptions=True)
        error = Error(self.stream, round(self.received_s, 3), f"server stopped before labelling all audio "
                      f"(drain of {DRAIN_S:g} s ran out): no final stats", "server")
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            await asyncio.wait_for(self.ws.send(json.dumps(error.to_json())), CLOSE_TIMEOUT_S)
        await self.close(CloseCode.GOING_AWAY, "server stopping")

    # -- the three directions --------------------------------------------------------------------

    async def read(self) -> None:
        """Client messages into the audio queue until `end`, an error, a limit, or the server stopping.

        After that it goes on reading, so the closing handshake is never stuck behind unread
        messages; what comes after an error is ignored, and anything after `end` is an error itself.
        """
        while True:
            try:
                message = await asyncio.wait_for(self.ws.recv(), self.limits.idle_timeout_s
                                                 if self.ending is None else None)
            except TimeoutError:
                await self.fail(f"no message for {self.limits.idle_timeout_s:g} s (serve.idle_timeout_s): send audio "
                                f"continuously and {{\"type\": \"end\"}} when done")
                continue
            try:
                await self.take(message)
            except ProtocolError as e:
                await self.fail(str(e))

    async def take(self, message: str | bytes) -> None:
        if self.ending is not None or self.input_closed:
            if self.ending is not None and self.ending.code == CloseCode.NORMAL_CLOSURE:
                raise ProtocolError("nothing may follow the end message")
            return  # already failing: the rest is ignored
        if isinstance(message, str):
            parsed = parse_text(message)
            if isinstance(parsed, End):
                self.end(CloseCode.NORMAL_CLOSURE, "end of audio")
                await self.close_input()
            elif self.start.done():
                raise ProtocolError("the start message must come first, before any audio, and only once")
            else:
                self.start.set_result(parsed)
            return
        if not self.start.done():
            self.start.set_result(Start())  # audio without a start message: the defaults
        start = self.start.result()
        samples = decode_audio(message, start)
        if self.received_s + len(samples) / start.sample_rate > self.limits.max_audio_s:
            raise ProtocolError(f"audio limit of {self.limits.max_audio_s:g} s per connection reached "
                                f"(serve.max_audio_s): open a new connection to go on")
        self.received_s += len(samples) / start.sample_rate
        if len(samples):
            await self.audio.put(samples)

    async def label(self) -> None:
        """The recognizer's events for this client's audio into the outbox, then the end marker."""
        start = await self.start
        source = ChunkSource(audio=self.blocks(), sample_rate=start.sample_rate)
        try:
            async for event in self.recognizer.run(source, stream=self.stream, live=True):
                if start.levels or not isinstance(event, Level):
                    self.deliver(event)
        except SlowReader:
            await self.outbox.put(None)  # the sender is past its queue: let it end with its error
            raise
        except Exception as e:  # a pipeline failure ends this connection only
            self.end(CloseCode.INTERNAL_ERROR, "internal error")
            self.deliver(Error(self.stream, round(self.received_s, 3), f"{type(e).__name__}: {e}", "server"))
        await self.outbox.put(None)

    async def send(self) -> None:
        """Outbox to socket, then the close; raises SlowReader for a client that does not read."""
        while (text := await self.outbox.get()) is not None:
            try:
                await asyncio.wait_for(self.ws.send(text), self.limits.send_timeout_s)
            except TimeoutError:
                raise SlowReader() from None
        if self.overflowed:
            raise SlowReader()
        ending = self.ending or _Ending()
        await self.close(ending.code, ending.reason)

    # -- helpers ---------------------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Queue one event for the client; a full outbox means the client stopped reading."""
        try:
            self.outbox.put_nowait(json.dumps(event.to_json(), ensure_ascii=False))
        except asyncio.QueueFull:
            self.overflowed = True
            raise SlowReader() from None

    async def fail(self, message: str) -> None:
        """A policy error: one `error` event now; the input ends, the held audio is still labelled."""
        if self.ending is not None and self.ending.code != CloseCode.NORMAL_CLOSURE:
            return  # one error per connection: it closes with the first
        self.ending = _Ending(CloseCode.POLICY_VIOLATION, message[:120])  # a close reason holds at most 123 bytes
        with contextlib.suppress(SlowReader):  # the labeller meets the full outbox and cuts the client off
            self.deliver(Error(self.stream, round(self.received_s, 3), message, "protocol"))
        await self.close_input()

    def end(self, code: int, reason: str) -> None:
        if self.ending is None:
            self.ending = _Ending(code, reason)

    async def blocks(self):
        """The client's sample blocks, as `ChunkSource` reads them, until the input is closed."""
        try:
            while (samples := await self.audio.get()) is not None and not self.stopped.is_set():
                yield samples
        finally:
            self.input_closed = True
            while not self.audio.empty():  # frees a reader waiting to put: it must go on reading
                self.audio.get_nowait()

    async def close_input(self) -> None:
        """No more audio: the run labels what it holds and ends. Idempotent."""
        if self.input_closed:
            return
        self.input_closed = True
        if not self.start.done():  # nothing was sent: the run still starts, and ends at once
            self.start.set_result(Start())
        await self.audio.put(None)

    async def close(self, code: int, reason: str) -> None:
        """The closing handshake, bounded: a client that does not take part is disconnected."""
        try:
            await asyncio.wait_for(self.ws.close(code, reason), CLOSE_TIMEOUT_S)
        except (TimeoutError, ConnectionClosed):
            self.ws.transport.abort()
