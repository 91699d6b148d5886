"""The network front's pure parts (realtime/front.py): the ZMTP meter that budgets a connection in frames and
messages, the bind-address parser and the limits' rules. No sockets but where the parser binds one."""

from __future__ import annotations

import socket

import pytest

from posecast.attack import zmtp_frame, zmtp_greeting, zmtp_ready
from realtime.front import ZmtpError, ZmtpMeter, parse_bind
from realtime.limits import Limits

# READY (a command), a 300-byte message (LONG frame), a PING command, three 1-byte messages, a CURVE-style MESSAGE
# command (a message), an empty command (not one).
PING = zmtp_frame(b"\x04PING\x00\x00", command=True)
STREAM = (zmtp_greeting() + zmtp_ready() + zmtp_frame(b"a" * 300) + PING + zmtp_frame(b"x") * 3
          + zmtp_frame(b"\x07MESSAGE" + b"z" * 40, command=True) + zmtp_frame(b"", command=True))


def feed(meter: ZmtpMeter, data: bytes, chunk: int, max_frames: int = 1 << 30, max_data: int = 1 << 30):
    """Scan ``data`` in ``chunk``-byte reads; (bytes through, frames started, messages charged)."""
    pos = frames = charged = 0
    while pos < len(data):
        n, f, ch, stop = meter.scan(memoryview(data[pos:pos + chunk]), max_frames - frames, max_data - charged)
        pos, frames, charged = pos + n, frames + f, charged + ch
        if stop:
            break
    return pos, frames, charged


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 9, 64, 65, 1 << 16])
def test_the_meter_counts_frames_and_messages_whatever_the_reads(chunk):
    m = ZmtpMeter()
    assert feed(m, STREAM, chunk) == (len(STREAM), 8, 5)   # 8 frames, 5 of them messages
    assert m.frames == 8 and m.largest == 300 and not m.in_greeting


def test_the_meter_stops_before_the_first_frame_over_an_allowance():
    head = len(zmtp_greeting()) + len(zmtp_ready())
    m = ZmtpMeter()
    n, frames, charged, stop = m.scan(memoryview(STREAM), 2, 100)    # READY and the 300-byte message
    assert (n, frames, charged, stop) == (head + 9 + 300, 2, 1, "frames")   # (a LONG header: 9 bytes)
    m = ZmtpMeter()
    n, frames, charged, stop = m.scan(memoryview(STREAM), 100, 2)    # messages: the 300 bytes and ... the PING
    # is a command (charged, then refunded once named), so the window of 2 reaches the first 1-byte message
    assert (frames, charged, stop) == (4, 2, "data") and n == head + 309 + len(PING) + 3


def test_the_meter_refuses_what_is_not_zmtp_3():
    for bad, what in [(b"GET / HTTP/1.1\r\n", "not a ZeroMQ"), (b"\xff" + b"\0" * 8 + b"\x7e", "not a ZeroMQ"),
                      (b"\xff" + b"\0" * 8 + b"\x7f\x02", "ZMTP version 2")]:
        with pytest.raises(ZmtpError, match=what):
            ZmtpMeter().scan(memoryview(bad), 10, 10)


def test_parse_bind():
    assert parse_bind("tcp://127.0.0.1:5555") == (socket.AF_INET, ("127.0.0.1", 5555))
    assert parse_bind("tcp://*:0") == (socket.AF_INET, ("0.0.0.0", 0))
    assert parse_bind("tcp://[::1]:7") == (socket.AF_INET6, ("::1", 7))
    assert parse_bind("tcp://localhost:9")[1][1] == 9
    assert parse_bind("ipc:///tmp/x.sock") == (socket.AF_UNIX, "/tmp/x.sock")
    assert parse_bind("ipc://@name") == (socket.AF_UNIX, "\0name")
    for bad, what in [("udp://x:1", "use tcp://HOST:PORT"), ("tcp://127.0.0.1:99999", "out of range"),
                      ("tcp://no-such-host.invalid:1", "not an address"), ("inproc://x", "use tcp://")]:
        with pytest.raises(ValueError, match=what):
            parse_bind(bad)


def test_limits_keep_the_reply_queue_deeper_than_the_burst():
    assert Limits().reply_queue == 64 and Limits(rate_burst=100).reply_queue == 200
    with pytest.raises(ValueError, match=r"send_hwm \(8\) must exceed rate_burst \(32\)"):
        Limits(send_hwm=8)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        Limits(heartbeat_s=3.0, idle_timeout_s=2.0)
    with pytest.raises(ValueError, match="recv_window must be >= 1"):
        Limits(recv_window=0)
