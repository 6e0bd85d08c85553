"""A TCP forwarder on 127.0.0.1 that a test can cut and restore, to play a store outage."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tests.support.servers import free_port


class Proxy:
    """Forward ``127.0.0.1:port`` to ``target``; :meth:`cut` drops every connection.

    ``reply_delay`` holds each chunk of the server's answers that long: a slow server.
    """

    def __init__(self, target_port: int, reply_delay: float = 0.0) -> None:
        self.target_port = target_port
        self.reply_delay = reply_delay
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> Proxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def restore(self) -> None:
        """Listen again on the same port after :meth:`cut`."""
        if self._listener is None:
            self.start()

    def cut(self) -> None:
        """Stop listening and reset every open connection, like a server that died."""
        if self._listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone would not.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b, answers in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, answers), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        try:
            while data := src.recv(65536):
                if answers and self.reply_delay:  # read each time: a test may change it
                    time.sleep(self.reply_delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
