"""The capture client's stream ledger (clients/ledger.py): outstanding frames, latest-wins drop accounting,
counts and latency samples. Pure: no sockets, every time passed in (made-up clocks here)."""

from __future__ import annotations

import pytest

from clients.ledger import StreamLedger

TIMINGS = {"decode": 0.1, "render": 0.5, "engine": 1.0, "encode": 0.3, "total": 1.9}


def _send(led: StreamLedger, seqs, t0: float = 100.0, c2s_ms: float = 2.0) -> None:
    """Send ``seqs``, frame k captured at ``t0 + k / 100`` (wall) and sent at ``k`` (monotonic)."""
    for s in seqs:
        led.record_send(s, t0 + s / 100, c2s_ms, now_s=float(s), panel=f"panel {s}")


def _frame(led: StreamLedger, seq: int, dropped: int = 0, *, t0: float = 100.0, after_ms: float = 30.0,
           timings=TIMINGS, now_s: float = 50.0):
    """The server's reply to ``seq``, received ``after_ms`` after its capture."""
    cap = t0 + seq / 100
    return led.record_frame(seq, cap, dropped, timings, recv_wall_s=cap + after_ms / 1e3, now_s=now_s)


def _balanced(led: StreamLedger) -> bool:
    return led.sent == led.received + led.dropped + led.errors + led.lost


def test_replies_in_order_resolve_their_frames_and_sample_latencies():
    led = StreamLedger()
    _send(led, range(3), c2s_ms=2.0)
    assert (led.sent, led.outstanding, led.received) == (3, 3, 0)
    r = _frame(led, 0, after_ms=30.0)
    assert r.frame.panel == "panel 0" and r.frame.capture_to_send_ms == 2.0
    assert r.glass_to_glass_ms == pytest.approx(30.0) and r.timings == TIMINGS
    assert list(led.pending) == [1, 2]
    _frame(led, 1, after_ms=40.0)
    _frame(led, 2, after_ms=50.0)
    assert (led.outstanding, led.received, led.dropped, led.errors, led.lost) == (0, 3, 0, 0, 0) and _balanced(led)
    assert led.glass_to_glass_ms == pytest.approx([30.0, 40.0, 50.0])
    # wire = glass-to-glass - capture->send - the server's total
    assert led.stages["wire"] == pytest.approx([30 - 2 - 1.9, 40 - 2 - 1.9, 50 - 2 - 1.9])
    assert led.stages["server_engine"] == [1.0] * 3 and led.stages["capture_to_send"] == [2.0] * 3
    t = led.totals()
    assert (t["frames_sent"], t["frames_received"], t["dropped"], t["errors"], t["lost"]) == (3, 3, 0, 0, 0)
    assert t["latency_p50_ms"] == pytest.approx(40.0) and t["latency_p99_ms"] == pytest.approx(49.8)
    assert t["stages"]["glass_to_glass"] == pytest.approx(40.0) and t["stages"]["server_total"] == 1.9
    assert t["fps"] == pytest.approx(3 / 50.0)   # 3 replies between the first send (0) and the last (50)


def test_a_newer_reply_answers_every_older_frame():
    """Latest-wins: the server answers in order, so a reply to 3 means 0-2 were answered or dropped."""
    led = StreamLedger()
    _send(led, range(5))
    r = _frame(led, 3, dropped=3)
    assert r.frame.panel == "panel 3" and list(led.pending) == [4]
    assert (led.received, led.dropped, led.outstanding) == (1, 3, 1)
    _frame(led, 4, dropped=3)
    assert (led.received, led.dropped, led.outstanding) == (2, 3, 0) and _balanced(led)


def test_drop_count_frees_oldest_outstanding():
    led = StreamLedger()
    _send(led, range(4))
    # reply to 0 says 2 frames were dropped (1 and 2, replaced by 3): only 3 can still be outstanding
    r = _frame(led, 0, dropped=2)
    assert r.frame.panel == "panel 0"
    assert list(led.pending) == [3] and led.dropped == 2
    _frame(led, 3, dropped=2)
    assert (led.sent, led.received, led.dropped, led.outstanding) == (4, 2, 2, 0) and _balanced(led)


def test_the_server_drop_count_never_goes_down_within_a_session():
    led = StreamLedger()
    _send(led, range(4))
    _frame(led, 1, dropped=1)
    _frame(led, 3, dropped=0)        # a smaller count (reordered or reset) is not believed
    assert led.sess_dropped == 1 and led.dropped == 1 and led.outstanding == 0


def test_error_replies_resolve_their_frame_and_are_counted_by_reason():
    led = StreamLedger()
    _send(led, range(3))
    assert led.record_error_reply(0, "bad_landmarks: rejected", now_s=10.0) == 0
    assert list(led.pending) == [1, 2] and led.last_progress_s == 10.0
    assert led.record_error_reply(1, "bad_landmarks: rejected", now_s=11.0) == 1   # one came before
    _frame(led, 2)
    assert (led.sent, led.received, led.errors, led.dropped, led.lost) == (3, 1, 2, 0, 0) and _balanced(led)
    # an error about no frame in particular is counted, answers nothing, and moves the progress clock
    _send(led, [3])
    assert led.record_error_reply(None, "internal: oops", now_s=12.0) == 0
    assert list(led.pending) == [3] and led.last_progress_s == 12.0 and led.sess_answered == 3
    assert led.error_reasons == {"bad_landmarks: rejected": 2, "internal: oops": 1}
    assert led.totals()["error_reasons"] == led.error_reasons and led.totals()["errors"] == 3


def test_client_side_errors_count_without_resolving_anything():
    led = StreamLedger()
    _send(led, range(2))
    assert led.count_error("malformed reply: bad") == 0
    assert led.count_error("malformed reply: bad") == 1
    assert (led.errors, led.outstanding, led.received, led.sess_answered) == (2, 2, 0, 0)
    # an undecodable JPEG: the frame reply is received (it resolved its frame) and is an error too
    _frame(led, 0)
    assert led.count_error("undecodable JPEG in a frame reply") == 0
    assert (led.received, led.errors, led.outstanding) == (1, 3, 1)
    assert led.error_reasons == {"malformed reply: bad": 2, "undecodable JPEG in a frame reply": 1}


def test_reply_to_a_seq_never_sent():
    newer = StreamLedger()
    _send(newer, [0, 1])
    r = _frame(newer, 99)             # answers everything older, is no frame's own reply
    assert r.frame is None and newer.outstanding == 0 and newer.received == 1
    assert "wire" not in newer.stages and newer.stages["glass_to_glass"] == [pytest.approx(30.0)]
    older = StreamLedger()
    _send(older, [5, 6])
    r = _frame(older, 4)              # older than anything outstanding: resolves nothing by seq, but it is one
    assert r.frame is None and older.received == 1   # more answer of this session, so the oldest frame (5)
    assert list(older.pending) == [6]                # counts as accounted for (a real server never sends it)


def test_duplicate_reply_counts_as_another_answer():
    """The server never sends one; if it did, it is received twice and the extra answer makes the ledger treat
    the oldest outstanding frame as accounted for (asserted, so that a change to this is deliberate)."""
    led = StreamLedger()
    _send(led, range(3))
    assert _frame(led, 0).frame.panel == "panel 0"
    again = _frame(led, 0)
    assert again.frame is None and led.received == 2 and led.sess_answered == 2 and list(led.pending) == [2]
    _frame(led, 2)
    assert (led.sent, led.received, led.outstanding, led.lost) == (3, 3, 0, 0)


def test_end_session_loses_outstanding_frames_and_banks_drops():
    led = StreamLedger()
    _send(led, range(6))
    _frame(led, 0)
    _frame(led, 2, dropped=1)              # 1 dropped; 3-5 outstanding when the server goes away
    assert led.outstanding == 3 and led.dropped == 1
    led.end_session()                      # reconnecting
    assert (led.outstanding, led.lost, led.dropped) == (0, 3, 1)
    assert (led.sess_sent, led.sess_answered, led.sess_dropped) == (0, 0, 0)
    # the new session's drop count starts from zero on the server; seqs go on
    _send(led, range(6, 9))
    _frame(led, 6)
    _frame(led, 8, dropped=1)              # 7 dropped
    assert led.dropped == 2 and led.outstanding == 0
    led.end_session()                      # the end of the run: nothing outstanding, nothing more lost
    assert (led.sent, led.received, led.dropped, led.errors, led.lost) == (9, 4, 2, 0, 3) and _balanced(led)
    t = led.totals()
    assert (t["frames_sent"], t["frames_received"], t["dropped"], t["lost"]) == (9, 4, 2, 3)


def test_stalled_only_while_frames_are_outstanding():
    led = StreamLedger()
    assert not led.stalled(1e9, 1.0)
    led.record_send(0, 100.0, 1.0, now_s=10.0)
    led.record_send(1, 100.1, 1.0, now_s=10.8)       # later sends do not move the progress clock
    assert led.last_progress_s == 10.0
    assert not led.stalled(11.0, 1.0) and led.stalled(11.01, 1.0)
    led.record_frame(0, 100.0, 0, {}, recv_wall_s=100.05, now_s=11.5)
    assert not led.stalled(12.5, 1.0) and led.stalled(12.6, 1.0)
    led.record_frame(1, 100.1, 0, {}, recv_wall_s=100.15, now_s=12.6)
    assert not led.stalled(1e9, 1.0)                 # nothing outstanding: never stalled
    led.record_send(2, 200.0, 1.0, now_s=20.0)       # the first frame outstanding again restarts the clock
    assert led.last_progress_s == 20.0


def test_recent_fps_counts_replies_in_the_window():
    led = StreamLedger(window_s=1.0)
    assert led.recent_fps() == 0.0
    _send(led, range(4))
    for seq, now in zip(range(3), (10.0, 10.25, 10.5)):
        _frame(led, seq, now_s=now)
    assert led.recent_fps() == pytest.approx(4.0)    # 3 replies, 2 intervals in 0.5 s
    _frame(led, 3, now_s=12.0)                       # the others are out of the window
    assert led.recent_fps() == 0.0 and led.received == 4


def test_totals_of_an_empty_run_and_of_replies_without_timings():
    t = StreamLedger().totals()
    assert t == {"frames_sent": 0, "frames_received": 0, "dropped": 0, "errors": 0, "lost": 0,
                 "error_reasons": {}, "fps": 0.0, "latency_p50_ms": None, "latency_p99_ms": None, "stages": {}}
    led = StreamLedger()
    _send(led, [0])
    led.sample("normalize", 0.5)
    r = _frame(led, 0, timings=None, now_s=0.0)      # a reply without timings; received at the send time
    assert r.timings == {} and "wire" not in led.stages
    t = led.totals()
    assert t["fps"] == 0.0                           # no time span to measure over
    assert set(t["stages"]) == {"capture_to_send", "normalize", "glass_to_glass"}


def test_a_lost_session_loses_only_what_the_old_session_held():
    """A server restart: the old server answered 0, 1, 3 (2 dropped); 4-6 died with it; the new server answers 7-9
    with no_session (sent before the client's new hello was read), then the new session's frames."""
    led = StreamLedger()
    _send(led, range(10))
    for seq in (0, 1):
        _frame(led, seq)
    _frame(led, 3, dropped=1)
    led.session_lost(7)
    assert list(led.pending) == [7, 8, 9] and led.lost == 3        # 4, 5, 6: the session that held them is gone
    for s in (7, 8, 9):
        led.record_error_reply(s, "no_session: x", now_s=60.0)
    assert led.outstanding == 0 and led.errors == 3
    _send(led, range(10, 14))                            # the new session: its drop count starts at 0 again
    _frame(led, 10)
    _frame(led, 13, dropped=2)
    assert (led.sent, led.received, led.dropped, led.errors, led.lost, led.outstanding) == (14, 5, 3, 3, 3, 0)
    assert _balanced(led)
