"""The hung-worker policy alone (server/watchdog.py): heartbeats, then first-token and inter-token
timeouts measured on the engine's output, not on a request's wait."""

from __future__ import annotations

from server.watchdog import CallState, Timeouts, verdict

T = Timeouts(heartbeat_s=10, first_token_s=60, inter_token_s=20)


def test_a_silent_worker_is_hung_even_when_idle():
    assert verdict(100, last_heard=95, last_output=0, calls=[], timeouts=T) is None
    assert "heartbeat" in verdict(100, last_heard=89, last_output=0, calls=[], timeouts=T)


def test_no_first_token_within_the_timeout_is_a_hang():
    call = CallState(started=100, produced=False, paused=False)
    assert verdict(159, last_heard=159, last_output=0, calls=[call], timeouts=T) is None
    assert "first token" in verdict(161, last_heard=161, last_output=0, calls=[call], timeouts=T)


def test_a_pause_in_output_while_generating_is_a_hang():
    call = CallState(started=0, produced=True, paused=False)
    assert verdict(119, last_heard=119, last_output=100, calls=[call], timeouts=T) is None
    assert "no token" in verdict(121, last_heard=121, last_output=100, calls=[call], timeouts=T)


def test_a_request_queued_behind_a_busy_engine_is_not_late():
    running = CallState(started=0, produced=True, paused=False)
    queued = CallState(started=10, produced=False, paused=False)  # waits for the model lock
    assert verdict(500, last_heard=500, last_output=495, calls=[running, queued], timeouts=T) is None


def test_the_first_token_clock_of_a_waiting_request_starts_when_the_engine_last_produced():
    # the earlier request finished at 200; this one waited for it since 10 and now reads its prompt
    waited = CallState(started=10, produced=False, paused=False)
    assert verdict(250, last_heard=250, last_output=200, calls=[waited], timeouts=T) is None
    assert verdict(261, last_heard=261, last_output=200, calls=[waited], timeouts=T) is not None


def test_calls_paused_by_backpressure_are_not_expected_to_produce():
    paused = CallState(started=0, produced=True, paused=True)
    assert verdict(1000, last_heard=1000, last_output=10, calls=[paused], timeouts=T) is None
    fresh = CallState(started=990, produced=False, paused=False)
    assert verdict(1000, last_heard=1000, last_output=10, calls=[paused, fresh], timeouts=T) is None
    assert verdict(1051, last_heard=1051, last_output=10, calls=[paused, fresh], timeouts=T) is not None


def test_the_watch_ticks_often_enough_for_the_smallest_timeout():
    assert Timeouts(heartbeat_s=2, first_token_s=600, inter_token_s=120).tick_s == 0.5
    assert Timeouts().tick_s == 1.0
