"""Streaming reader and writer for multipart/related bodies (RFC 2387, RFC 2046 §5.1), as used
by STOW-RS requests and WADO-RS responses (PS3.18 §8.6.1.2).

The reader never holds more than one read chunk plus a delimiter's length in memory: a part's
body is handed on in chunks as it arrives, so a 1 GB request does not grow the process.
"""

import re
import secrets
from collections.abc import Iterator
from email.message import Message

MAX_HEADER_BYTES = 16 * 1024


class MultipartError(ValueError):
    pass


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Media type (lower case) and parameters of a Content-Type or one Accept entry."""
    msg = Message()
    msg["content-type"] = value or ""
    media = msg.get_content_type() if value else ""
    params = {k.lower(): v for k, v in (msg.get_params() or [])[1:]}
    # email.message defaults an unparsable type to text/plain: treat that as nothing.
    if value and not re.match(r"^\s*[\w.+-]+/[\w.+-]+", value):
        return "", {}
    return media, params


class Part:
    def __init__(self, reader: "MultipartReader", headers: dict[str, str]):
        self._reader = reader
        self.headers = headers
        self._done = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def chunks(self) -> Iterator[bytes]:
        if self._done:
            return
        yield from self._reader._body_chunks()
        self._done = True

    def drain(self) -> None:
        for _ in self.chunks():
            pass


class MultipartReader:
    def __init__(self, stream, boundary: str, chunk_size: int = 1024 * 1024):
        if not boundary or len(boundary) > 70:
            raise MultipartError("missing or invalid multipart boundary")
        self._stream = stream
        self._chunk_size = chunk_size
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        # A leading CRLF lets the first delimiter be found like all the others.
        self._buf = bytearray(b"\r\n")
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._stream.read(self._chunk_size)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _body_chunks(self) -> Iterator[bytes]:
        keep = len(self._delimiter) - 1
        while True:
            idx = self._buf.find(self._delimiter)
            if idx >= 0:
                if idx:
                    yield bytes(self._buf[:idx])
                del self._buf[: idx + len(self._delimiter)]
                return
            if len(self._buf) > keep:
                out = bytes(self._buf[:-keep])
                del self._buf[:-keep]
                yield out
            if not self._fill():
                raise MultipartError("multipart body ended before its closing delimiter")

    def _read_headers(self) -> dict[str, str]:
        while (end := self._buf.find(b"\r\n")) < 0:
            if len(self._buf) > MAX_HEADER_BYTES or not self._fill():
                raise MultipartError("malformed multipart delimiter line")
        del self._buf[: end + 2]  # transport padding after the delimiter
        if self._buf.startswith(b"\r\n"):
            del self._buf[:2]
            return {}
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            if len(self._buf) > MAX_HEADER_BYTES or not self._fill():
                raise MultipartError("multipart part headers are malformed or too long")
        if end > MAX_HEADER_BYTES:
            raise MultipartError("multipart part headers are too long")
        raw = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        headers: dict[str, str] = {}
        for line in raw.split("\r\n"):
            name, sep, value = line.partition(":")
            if not sep:
                raise MultipartError("malformed multipart part header")
            headers[name.strip().lower()] = value.strip()
        return headers

    def parts(self) -> Iterator[Part]:
        # Skip the preamble up to the first delimiter.
        for _ in self._body_chunks():
            pass
        while True:
            while len(self._buf) < 2:
                if not self._fill():
                    raise MultipartError("multipart body ended after a delimiter")
            if self._buf[:2] == b"--":
                return  # close delimiter; the epilogue is ignored
            part = Part(self, self._read_headers())
            yield part
            part.drain()


def new_boundary() -> str:
    return secrets.token_hex(16)


def stream_parts(items, boundary: str) -> Iterator[bytes]:
    """Serialise (content_type, chunk_iterable) pairs as a multipart/related body."""
    for content_type, chunks in items:
        yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("latin-1")
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("latin-1")
