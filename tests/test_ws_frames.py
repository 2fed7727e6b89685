"""The receive fast path's websocket framing, byte by byte (RFC 6455), without sockets."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l2rec.venue.ws_frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_TEXT,
    FrameParser,
    FrameTooLarge,
    ProtocolError,
)


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = None) -> bytes:
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 1 << 16:
        head += bytes([m | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([m | 127]) + n.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload


def test_every_length_encoding_and_several_frames_in_one_read():
    small, medium, large = b"x" * 5, b"y" * 300, b"z" * 70_000
    data = frame(OP_TEXT, small) + frame(OP_TEXT, medium) + frame(OP_BINARY, large)
    assert FrameParser(1 << 20).feed(data) == [(OP_TEXT, small), (OP_TEXT, medium), (OP_BINARY, large)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=400), min_size=1, max_size=8), st.data())
def test_frames_split_at_any_byte_come_out_whole_and_in_order(payloads, data):
    stream = b"".join(frame(OP_TEXT, p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    parser = FrameParser(1 << 20)
    out = []
    last = 0
    for cut in [*cuts, len(stream)]:
        out += parser.feed(stream[last:cut])
        last = cut
    assert out == [(OP_TEXT, p) for p in payloads]
    assert parser.buffered() == 0


def test_masked_frames_are_unmasked():
    mask = os.urandom(4)
    assert FrameParser(1024).feed(frame(OP_TEXT, b'{"op":"pong"}', mask=mask)) == [(OP_TEXT, b'{"op":"pong"}')]


def test_fragments_are_joined_and_control_frames_may_interleave():
    data = (frame(OP_TEXT, b"hel", fin=False) + frame(OP_PING, b"p") + frame(OP_CONT, b"lo ", fin=False)
            + frame(OP_CONT, b"world") + frame(OP_CLOSE, b"\x03\xe8"))
    assert FrameParser(1024).feed(data) == [(OP_PING, b"p"), (OP_TEXT, b"hello world"), (OP_CLOSE, b"\x03\xe8")]


def test_an_oversized_frame_is_refused_from_its_header_alone():
    header_only = frame(OP_TEXT, b"a" * 40_000)[:4]  # 4 bytes: the payload never arrived
    with pytest.raises(FrameTooLarge, match="40000 bytes > max_frame_bytes 32768"):
        FrameParser(32_768).feed(header_only)


def test_fragments_adding_up_past_the_limit_are_refused():
    parser = FrameParser(1000)
    parser.feed(frame(OP_TEXT, b"a" * 600, fin=False))
    with pytest.raises(FrameTooLarge):
        parser.feed(frame(OP_CONT, b"b" * 600))


@pytest.mark.parametrize("bad", [bytes([0xC1, 0x00]), frame(OP_CONT, b"x")])
def test_invalid_framing_is_a_protocol_error(bad):
    with pytest.raises(ProtocolError):
        FrameParser(1024).feed(bad)
