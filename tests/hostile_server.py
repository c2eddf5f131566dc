"""A loopback HTTP server that answers the txt2img API in every hostile way the suite knows.

`POST /MODE/...` answers according to MODE (see `BEHAVIOURS`); the request is read whole
first unless the mode says otherwise. Raw sockets, not http.server, so a reply can be
anything: a drip, a hang, a reset, a lie about its length, a bomb.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import struct
import threading
import time
import zlib

import numpy as np

from auditor.images import encode_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_for(prompt: str, seed: int, width: int, height: int) -> bytes:
    digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    return encode_png(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb_header(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG signature and header declaring a huge image, with a tiny (wrong) body."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_MAGIC + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")
    )


def png_text_bomb(width: int, height: int, inflated: int = 16 << 20) -> bytes:
    """A right-sized PNG carrying a zTXt chunk that inflates to `inflated` bytes."""
    good = png_for("bomb", 0, width, height)
    ztxt = b"Comment\0\0" + zlib.compress(b"A" * inflated, 9)
    return good[:33] + _chunk(b"zTXt", ztxt) + good[33:]


def jpeg_for(width: int, height: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _images(png: bytes) -> bytes:
    return json.dumps({"images": [base64.b64encode(png).decode()]}).encode()


def _response(status: str, body: bytes, headers: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n{headers}\r\n"
    ).encode() + body


# mode -> what the client must make of it: "ok", "transient" (exit 75) or "bad" (exit 2)
BEHAVIOURS: dict[str, str] = {
    "ok": "ok",
    "slow_ok": "ok",  # answers well inside the deadline
    "drip_headers": "transient",  # one byte of the status line and headers at a time, for ever
    "drip_body": "transient",  # headers at once, then one byte of the body at a time
    "hang": "transient",  # reads the request, never answers
    "hang_unread": "transient",  # never even reads the request
    "reset": "transient",  # TCP reset after reading the request
    "close_early": "transient",  # closes without a byte
    "truncated": "transient",  # Content-Length 1000, 12 bytes, close
    "chunked_truncated": "transient",  # a chunked body cut off mid-chunk
    "err500": "transient",
    "err503": "transient",
    "err429": "transient",
    "chunked_endless": "bad",  # a chunked body beyond max_response_bytes
    "stream_oversized": "bad",  # no Content-Length, more bytes than allowed
    "declared_oversized": "bad",  # Content-Length 10**12
    "content_length_5000_digits": "bad",
    "garbage_status": "bad",  # not HTTP at all
    "header_flood": "bad",  # 500 headers
    "header_line_100k": "bad",
    "empty_body": "bad",
    "html": "bad",
    "deep_json": "bad",  # 100,000 nested arrays
    "huge_int": "bad",  # a 5,000-digit integer
    "huge_float": "bad",  # 1e999
    "nan": "bad",
    "duplicate_keys": "bad",
    "many_values": "bad",  # 300,000 tiny objects in 0.9 MB
    "not_object": "bad",
    "images_not_list": "bad",
    "images_of_ints": "bad",
    "bad_base64": "bad",
    "jpeg": "bad",
    "png_bomb_header": "bad",  # PNG header declaring 20000x20000
    "png_text_bomb": "bad",  # right size, a zTXt chunk inflating to 16 MB
    "wrong_size": "bad",
    "truncated_png": "bad",
    "redirect": "bad",
    "err404": "bad",
    "err401": "bad",
}


class HostileServer:
    """Loopback; one thread per connection; `stop()` ends it (drips and hangs included)."""

    def __init__(self, drip_interval: float = 0.05, drip_limit_s: float = 6.0) -> None:
        self.drip_interval = drip_interval
        self.drip_limit_s = drip_limit_s
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (close alone does not)
        except OSError:
            pass
        self.sock.close()
        with self.lock:
            for conn in self.connections:
                try:
                    conn.close()
                except OSError:
                    pass
        self.thread.join(5)

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> tuple[str, dict]:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            part = conn.recv(65536)
            if not part:
                raise ConnectionError("client closed")
            data += part
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        while len(body) < length:
            part = conn.recv(65536)
            if not part:
                break
            body += part
        return path, json.loads(body or b"{}")

    def _peek_mode(self, conn: socket.socket) -> str:
        conn.settimeout(5)
        head = conn.recv(1024, socket.MSG_PEEK).decode("latin-1", "replace")
        parts = head.split(" ")
        return parts[1].strip("/").split("/")[0] if len(parts) > 1 else ""

    def _serve(self, conn: socket.socket) -> None:
        try:
            mode = self._peek_mode(conn)
            with self.lock:
                self.calls[mode] = self.calls.get(mode, 0) + 1
            if mode == "hang_unread":
                self.stopping.wait(self.drip_limit_s)
                return
            _, body = self._read_request(conn)
            self._answer(conn, mode, body)
        except (OSError, ValueError):
            pass  # the client gave up (its deadline) or sent junk: both expected
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _drip(self, conn: socket.socket, data: bytes) -> None:
        """One byte per drip_interval, for at most drip_limit_s (so a client without a deadline
        fails its test after that long instead of hanging it)."""
        conn.settimeout(5)
        end = time.monotonic() + self.drip_limit_s
        for byte in data:
            if self.stopping.is_set() or time.monotonic() > end:
                return
            conn.sendall(bytes([byte]))
            time.sleep(self.drip_interval)

    def _answer(self, conn: socket.socket, mode: str, body: dict) -> None:  # noqa: C901 (one branch per mode)
        width, height = int(body.get("width") or 32), int(body.get("height") or 32)
        good = png_for(str(body.get("prompt")), int(body.get("seed", 0)), width, height)
        send = conn.sendall
        if mode == "ok":
            send(_response("200 OK", _images(good)))
        elif mode == "slow_ok":
            time.sleep(0.05)
            send(_response("200 OK", _images(good)))
        elif mode == "drip_headers":
            self._drip(conn, _response("200 OK", _images(good)) * 100)
        elif mode == "drip_body":
            payload = _images(good) * 100
            send(f"HTTP/1.1 200 OK\r\nContent-Length: {len(payload)}\r\n\r\n".encode())
            self._drip(conn, payload)
        elif mode == "hang":
            self.stopping.wait(self.drip_limit_s)
        elif mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif mode == "close_early":
            pass
        elif mode == "truncated":
            send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b'{"images": [')
        elif mode == "chunked_truncated":
            send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + b'{"images": [')
        elif mode in ("err500", "err503", "err429", "err404", "err401"):
            code = mode[3:]
            send(_response(f"{code} Nope", b'{"error": "nope"}'))
        elif mode == "chunked_endless":
            send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            block = b" " * 65536
            for _ in range(64):
                send(b"10000\r\n" + block + b"\r\n")
        elif mode == "stream_oversized":
            send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            for _ in range(64):
                send(b" " * 65536)
        elif mode == "declared_oversized":
            send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000000\r\n\r\n{")
        elif mode == "content_length_5000_digits":
            send(b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n{")
        elif mode == "garbage_status":
            send(b"HELLO THERE\r\n\r\n" + b"\x00\xff" * 100)
        elif mode == "header_flood":
            send(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(500)) + b"\r\n")
        elif mode == "header_line_100k":
            send(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n")
        elif mode == "empty_body":
            send(_response("200 OK", b""))
        elif mode == "html":
            send(_response("200 OK", b"<html><body>It works!</body></html>"))
        elif mode == "deep_json":
            send(_response("200 OK", b"[" * 100_000 + b"]" * 100_000))
        elif mode == "huge_int":
            send(_response("200 OK", b'{"images": [' + b"7" * 5000 + b"]}"))
        elif mode == "huge_float":
            send(_response("200 OK", b'{"images": [1e999]}'))
        elif mode == "nan":
            send(_response("200 OK", b'{"images": NaN}'))
        elif mode == "duplicate_keys":
            send(_response("200 OK", b'{"images": [], "images": ["' + base64.b64encode(good) + b'"]}'))
        elif mode == "many_values":
            send(
                _response(
                    "200 OK",
                    b'{"images": ["' + base64.b64encode(good) + b'"], "x": [' + b"{}," * 300_000 + b"{}]}",
                )
            )
        elif mode == "not_object":
            send(_response("200 OK", b"[1, 2, 3]"))
        elif mode == "images_not_list":
            send(_response("200 OK", b'{"images": "abc"}'))
        elif mode == "images_of_ints":
            send(_response("200 OK", b'{"images": [1, 2]}'))
        elif mode == "bad_base64":
            send(_response("200 OK", b'{"images": ["%%% not base64 %%%"]}'))
        elif mode == "jpeg":
            send(_response("200 OK", _images(jpeg_for(width, height))))
        elif mode == "png_bomb_header":
            send(_response("200 OK", _images(png_bomb_header())))
        elif mode == "png_text_bomb":
            send(_response("200 OK", _images(png_text_bomb(width, height))))
        elif mode == "wrong_size":
            send(_response("200 OK", _images(png_for("x", 1, width // 2, height // 2))))
        elif mode == "truncated_png":
            send(_response("200 OK", _images(good[: len(good) // 2])))
        elif mode == "redirect":
            location = f"{self.url}/ok/sdapi/v1/txt2img?token=do-not-follow"
            send(_response("302 Found", b"{}", headers=f"Location: {location}\r\n"))
        else:
            send(_response("404 Not Found", b'{"error": "unknown mode"}'))
