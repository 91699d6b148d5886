"""Short versions of `make soak` and `make fuzz` (posecast/stress.py): the same checks, counted, never timed."""

from __future__ import annotations

import pytest

from posecast import stress


@pytest.mark.timeout(180)
def test_short_soak_accounts_for_every_frame_of_every_client():
    res = stress.soak(clients=2, fps=30.0, seconds=3.0, size=32)
    assert res["failures"] == [] and len(res["per_client"]) == 2
    for row in res["per_client"]:
        assert row["sent"] == 90 and row["received"] > 0 and row["lost"] == 0 and row["errors"] == 0
        assert row["sent"] == row["received"] + row["dropped"] + row["errors"] + row["lost"]
    assert res["rss_start_mib"] > 0 and res["rss_end_mib"] > 0 and res["ok"]


def test_decoder_raises_only_protocol_errors():
    res = stress.decode_fuzz(20_000, seed=3)
    assert res["other_exceptions"] == {} and 0.5 * 20_000 < res["rejected"] < 20_000


@pytest.mark.timeout(180)
def test_short_fuzz_no_crash_no_internal_error_legit_client_answered():
    res = stress.fuzz(messages=3000, connections=4, size=32)
    assert res["sent"] == 3000 and res["server_messages"] >= 3000 and res["server_alive"]
    assert res["internal_errors"] == 0 and res["server_errors"] > 1000
    assert res["legit_frames"] > 0 and res["legit_wrong"] == [] and res["ok"]
