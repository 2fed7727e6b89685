"""Websocket frames (RFC 6455) out of a byte stream: the connection's receive fast path.

websocket-client parses one frame per call in pure Python (several small reads, an object per frame);
here one ``recv`` of up to 256 KiB is split into every frame it holds, in one loop, and those frames are
told to the parser as one message. A frame's length is checked from its header, before its payload is
buffered: a frame larger than ``max_bytes`` is refused without being read. The frames that came complete
before a refused (or malformed) one are not lost with it: the error carries them.
"""

from __future__ import annotations

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


class FramingError(Exception):
    """The byte stream cannot be read past this point.

    ``frames`` are the complete frames, ``(opcode, payload)`` in order, that the same ``feed`` found before
    the fault: they arrived intact and are the caller's to handle like any others.
    """

    def __init__(self, message: str, frames: list[tuple[int, bytes]] | None = None) -> None:
        super().__init__(message)
        self.frames: list[tuple[int, bytes]] = frames if frames is not None else []


class FrameTooLarge(FramingError):
    """A frame header announced more bytes than allowed."""


class ProtocolError(FramingError):
    """The byte stream is not valid websocket framing."""


def _unmask(payload: bytes, mask: bytes) -> bytes:
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")


class FrameParser:
    """Feed it bytes as they arrive; it returns the complete frames, ``(opcode, payload)``, in order.

    Fragmented messages are reassembled (the opcode of the first fragment, the payloads joined); control
    frames may come between fragments, as the RFC allows.
    """

    __slots__ = ("_buf", "_frag", "_frag_op", "_frag_size", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = b""
        self._frag: list[bytes] = []
        self._frag_op = 0
        self._frag_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The frames ``data`` completed, in order. Raises a ``FramingError`` (``FrameTooLarge``,
        ``ProtocolError``) carrying the frames completed before the fault; the stream is unusable after."""
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        i = 0
        n = len(buf)
        max_bytes = self.max_bytes
        while n - i >= 2:
            b0 = buf[i]
            b1 = buf[i + 1]
            ln = b1 & 0x7F
            h = i + 2
            if ln == 126:
                if n - h < 2:
                    break
                ln = int.from_bytes(buf[h:h + 2], "big")
                h += 2
            elif ln == 127:
                if n - h < 8:
                    break
                ln = int.from_bytes(buf[h:h + 8], "big")
                h += 8
            if ln > max_bytes or self._frag_size + ln > max_bytes:
                raise FrameTooLarge(f"{ln} bytes > max_frame_bytes {max_bytes}", out)
            mask = None
            if b1 & 0x80:
                if n - h < 4:
                    break
                mask = buf[h:h + 4]
                h += 4
            end = h + ln
            if end > n:
                break
            payload = buf[h:end]
            if mask is not None:
                payload = _unmask(payload, mask)
            i = end
            if b0 & 0x70:
                raise ProtocolError("reserved bits set (no extension was negotiated)", out)
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode >= 0x8:  # control frames are never fragmented and may interleave
                out.append((opcode, payload))
            elif opcode == OP_CONT:
                if not self._frag:
                    raise ProtocolError("continuation frame without a first fragment", out)
                self._frag.append(payload)
                self._frag_size += ln
                if fin:
                    out.append((self._frag_op, b"".join(self._frag)))
                    self._frag, self._frag_size = [], 0
            elif fin:
                if self._frag:
                    raise ProtocolError("new message before the last one's final fragment", out)
                out.append((opcode, payload))
            else:
                if self._frag:
                    raise ProtocolError("new message before the last one's final fragment", out)
                self._frag, self._frag_op, self._frag_size = [payload], opcode, ln
        self._buf = buf[i:] if i < n else b""
        return out

    def buffered(self) -> int:
        """Bytes held for frames not complete yet (the partial frame and the fragments of a message)."""
        return len(self._buf) + self._frag_size
