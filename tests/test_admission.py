"""Admission on its own: pure functions of the waiting groups, the residents and the time."""

from server.admission import SLACK, Decision, Group, deadline, decide, expected_wait, order
from server.placement import ResidentView

BUSY_A = ResidentView("a", 600, busy=True, drain_s=5)
IDLE_A = ResidentView("a", 600)


def test_a_waiting_model_that_needs_a_busy_one_drained_defers_to_its_work():
    decision = decide([Group("b", 600, waiting=3, oldest=0, load_s=2)], [BUSY_A], 1000, now=1, max_wait_s=60)
    assert decision.action == "hold" and decision.held == ("b",)
    assert decision.wake_at == deadline(Group("b", 600, 3, 0, 2), [BUSY_A], 60)


def test_the_deadline_leaves_room_for_the_drain_the_load_and_slack_within_the_bound():
    group = Group("b", 600, waiting=1, oldest=100, load_s=2)
    assert deadline(group, [BUSY_A], 60) == 100 + 60 * (1 - SLACK) - 2 - 5
    assert deadline(group, [IDLE_A], 60) == 100 + 60 * (1 - SLACK) - 2  # nothing busy: no drain to allow for
    assert deadline(group, [BUSY_A], 0) == 100  # no aging allowance: at once


def test_past_its_deadline_a_waiting_model_drains_the_busy_one():
    group = Group("b", 600, waiting=1, oldest=0, load_s=2)
    decision = decide([group], [BUSY_A], 1000, now=deadline(group, [BUSY_A], 60), max_wait_s=60)
    assert decision == Decision("drain", "b", drain=("a",), reason="aging")


def test_a_promised_group_keeps_its_turn_once_the_drain_is_done():
    late = Group("b", 600, waiting=1, oldest=0, load_s=2, promised=True)
    many = Group("a", 600, waiting=9, oldest=50, load_s=2)
    assert decide([many, late], [], 1000, now=51, max_wait_s=600).model == "b"


def test_when_the_device_frees_the_model_with_the_most_waiting_requests_goes_first():
    groups = [Group("b", 600, waiting=1, oldest=0), Group("c", 600, waiting=3, oldest=5)]
    decision = decide(groups, [IDLE_A], 1000, now=10, max_wait_s=600)
    assert decision == Decision("load", "c", evict=("a",), reason="idle")


def test_overdue_groups_come_first_earliest_deadline_first():
    groups = [Group("many", 600, waiting=9, oldest=50), Group("old", 600, waiting=1, oldest=0),
              Group("older", 600, waiting=1, oldest=-10)]
    assert [g.model for g in order(groups, [], now=100, max_wait_s=60)] == ["older", "old", "many"]


def test_a_model_that_fits_beside_the_busy_one_loads_at_once_without_a_switch():
    decision = decide([Group("small", 300, 1, 0)], [BUSY_A], 1000, now=0, max_wait_s=600)
    assert decision == Decision("load", "small", reason="free")


def test_a_lower_priority_model_that_fits_loads_while_a_larger_one_waits_for_the_busy_model():
    groups = [Group("big", 600, waiting=5, oldest=0), Group("small", 300, waiting=1, oldest=1)]
    assert decide(groups, [BUSY_A], 1000, now=2, max_wait_s=600).model == "small"


def test_an_overdue_model_blocks_others_from_taking_the_room_it_waits_for():
    groups = [Group("big", 600, waiting=1, oldest=0), Group("small", 300, waiting=1, oldest=1)]
    draining = ResidentView("a", 600, busy=True, draining=True)
    decision = decide(groups, [draining], 1000, now=1000, max_wait_s=60)
    assert decision.action == "wait" and decision.model == "big"


def test_a_b_a_b_arrivals_while_a_serves_lead_to_one_switch():
    """b's requests defer to a's; a's own arrivals are served by a; once a is idle, b goes, once."""
    groups = [Group("b", 600, waiting=2, oldest=1, load_s=2)]
    assert decide(groups, [BUSY_A], 1000, now=4, max_wait_s=60).action == "hold"
    assert decide(groups, [IDLE_A], 1000, now=8, max_wait_s=60) == Decision("load", "b", evict=("a",), reason="idle")


def test_a_model_that_can_never_fit_fails_its_waiters():
    pinned = ResidentView("p", 600, pinned=True)
    assert decide([Group("b", 600, 1, 0)], [pinned], 1000, now=0, max_wait_s=60).action == "fail"


def test_expected_wait_adds_up_what_stands_between_the_request_and_its_lease():
    load = Decision("load", "b", evict=("a",), reason="idle")
    assert expected_wait(load, "b", [IDLE_A], now=0, load_s=2, unload_s=1) == 3
    hold = Decision("hold", held=("b",), wake_at=20)
    assert expected_wait(hold, "b", [BUSY_A], now=0, load_s=2, unload_s=1) == 20 + 5 + 1 + 2
