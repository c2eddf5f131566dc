"""Wall-clock deadlines on sockets, whatever the other end does.

A socket timeout bounds one `recv` or `send`, not a request: a peer that sends one byte
every half second never trips a 2 s timeout and can hold a connection for ever. A
`Watchdog` bounds the whole exchange instead: at its deadline it shuts down every socket
it watches (`shutdown(SHUT_RDWR)` on a duplicate of the descriptor, so it also reaches a
socket since wrapped in TLS), which wakes any read or write blocked on it at once. The
code doing the reads then sees an error or an early end of data, checks `fired`, and
reports a timeout.

The HTTP suspect client bounds each request with one (connect, send, headers and body
together), and `serve` bounds how long a client may take to send its request.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time


class Watchdog:
    """Shuts down the watched sockets at `deadline` (time.monotonic()); `fired` says it did."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer: threading.Timer | None = None
        self._arm()

    def _arm(self) -> None:
        self._timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        """Seconds left (0 once the deadline has passed or the watchdog fired)."""
        return 0.0 if self.fired else max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return self.fired or time.monotonic() >= self.deadline

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down at the deadline (at once when it has passed)."""
        try:
            dup = sock.dup()
        except OSError:
            return
        with self._lock:
            self._sockets.append(dup)
            fired = self.fired
        if fired:
            _shutdown(dup)

    def rearm(self, deadline: float) -> None:
        """Move the deadline (e.g. from "request read" to "answer sent"); no effect once fired."""
        with self._lock:
            if self.fired:
                return
            if self._timer is not None:
                self._timer.cancel()
            self.deadline = deadline
            self._arm()

    def create_connection(self, address: tuple[str, int], timeout=None, source_address=None) -> socket.socket:
        """`socket.create_connection` within the deadline, the socket watched (http.client's hook)."""
        last: OSError | None = None
        for family, kind, proto, _, sockaddr in resolve(address[0], address[1], self):
            if self.expired():
                raise TimeoutError("connect")
            sock = socket.socket(family, kind, proto)
            self.watch(sock)
            try:
                sock.settimeout(max(self.remaining(), 0.001))
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last or OSError("the host name resolved to no address")

    def _fire(self) -> None:
        with self._lock:
            if time.monotonic() < self.deadline:  # re-armed meanwhile: that timer will fire
                return
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)

    def close(self) -> None:
        """Stop the timer and release the duplicated descriptors (the watched sockets stay open)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected: nothing left to wake


def resolve(host: str, port: int, watchdog: Watchdog) -> list:
    """getaddrinfo within the deadline (a resolver that hangs costs a daemon thread, not the request)."""
    try:
        ipaddress.ip_address(host)
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except ValueError:
        pass
    found: dict[str, object] = {}

    def lookup() -> None:
        try:
            found["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            found["error"] = exc

    thread = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    thread.start()
    thread.join(watchdog.remaining())
    if "error" in found:
        raise found["error"]  # type: ignore[misc]
    if "addresses" not in found:
        raise TimeoutError("name resolution")
    return found["addresses"]  # type: ignore[return-value]
