"""Run the explorer's uvicorn server: ``mav serve`` (:func:`serve`), or in a background thread
(notebooks, tests, benchmarks: :func:`running_server`), with the same settings either way.

A connection cannot hold the server: a request must arrive whole, headers and body, within
``request_read_s`` of the connection opening (or of the previous answer on a kept-alive
connection), however slowly its bytes trickle in (:class:`DeadlineH11Protocol`); an idle
kept-alive connection is closed after ``keep_alive_s``; at most ``max_connections``
connections are served at once (more get 503 from uvicorn); on exit, open connections (an
event stream, say) get ``graceful_s`` to finish.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class Limits:
    """How long a client may take, and how many connections are served at once."""

    request_read_s: float = 15.0
    keep_alive_s: float = 5.0
    max_connections: int = 200
    graceful_s: float = 3.0


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for reading each request.

    uvicorn's keep-alive timer restarts with every byte received, so a client sending one byte
    every few seconds (or a connection opened and left silent) would be kept forever.  Here the
    clock starts when the connection opens and again after each answer, is not reset by data,
    and stops once the whole request (headers and body) has arrived; if it runs out, the
    connection is closed (with 408 when no answer has started).
    """

    read_deadline_s = Limits.request_read_s

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.read_deadline_s, self._too_slow)

    def _disarm(self) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._deadline = None

    def _reading(self) -> bool:
        """Whether a request is still arriving (or awaited) on this connection."""
        return self.conn.their_state is h11.IDLE or self.conn.their_state is h11.SEND_BODY

    def handle_events(self) -> None:
        super().handle_events()
        if not self._reading():
            self._disarm()  # the request is in (or the client is done): the answer takes what it takes

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may already have read a pipelined request whole
        if not self.transport.is_closing() and self._reading():
            self._arm()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self.conn.our_state is h11.IDLE:  # no answer has started: say why the connection closes
            try:
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
                                     b"content-length: 0\r\nconnection: close\r\n\r\n")
            except Exception:  # the peer may be gone already
                pass
        self.transport.close()


def _protocol(limits: Limits) -> type[DeadlineH11Protocol]:
    return type("DeadlineH11Protocol", (DeadlineH11Protocol,), {"read_deadline_s": limits.request_read_s})


def server_options(limits: Limits | None = None) -> dict:
    """uvicorn's settings for the explorer: the h11 protocol with a read deadline, and the limits above."""
    limits = limits or Limits()
    return dict(http=_protocol(limits), ws="none", log_level="warning", timeout_keep_alive=limits.keep_alive_s,
                limit_concurrency=limits.max_connections, timeout_graceful_shutdown=limits.graceful_s)


def serve(app, host: str, port: int, limits: Limits | None = None) -> None:
    """Serve ``app`` until Ctrl-C (``mav serve``): ``uvicorn.run`` with :func:`server_options`."""
    uvicorn.run(app, host=host, port=port, **server_options(limits))


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app, host: str = "127.0.0.1", port: int | None = None,
                   start_timeout_s: float = 20.0, limits: Limits | None = None) -> Iterator[str]:
    """Serve ``app`` on ``host:port`` (a free port when ``None``) in a thread; yields the base URL.

    The server is asked to exit and its thread joined when the block ends.
    """
    port = port or free_port(host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, lifespan="off", **server_options(limits)))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the explorer server did not start on {host}:{port}")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)

