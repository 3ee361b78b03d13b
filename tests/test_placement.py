"""The placement policy on its own: pure functions, no processes, no clock."""

from backends.plan import MemoryEstimate
from backends.spec import FOREVER
from server.placement import (
    Ledger,
    Release,
    ResidentView,
    Verdict,
    WarmView,
    after_release,
    device_mb,
    eviction_order,
    expected_mb,
    over_budget_victims,
    plan,
    ram_over_budget,
    ram_room,
    refusal,
)


def test_fits_without_evicting_when_there_is_room():
    assert plan(300, [ResidentView("a", 500)], 1000).verdict is Verdict.FITS
    assert plan(300, [ResidentView("a", 500)], 1000).evict == ()


def test_larger_than_the_whole_budget_never_fits():
    decision = plan(1200, [], 1000)
    assert decision.verdict is Verdict.NEVER and "1000" in decision.reason


def test_pinned_models_reduce_what_can_ever_fit():
    decision = plan(600, [ResidentView("p", 500, pinned=True)], 1000)
    assert decision.verdict is Verdict.NEVER and "pinned" in decision.reason


def test_evicts_idle_models_shortest_keep_alive_first():
    residents = [ResidentView("long", 400, keep_alive_s=3600), ResidentView("short", 400, keep_alive_s=10)]
    assert plan(500, residents, 1000).evict == ("short",)


def test_evicts_least_recently_used_among_equal_keep_alives():
    residents = [ResidentView("recent", 400, last_used=20), ResidentView("old", 400, last_used=10)]
    assert plan(500, residents, 1000).evict == ("old",)


def test_forever_keep_alive_goes_last():
    residents = [ResidentView("forever", 300, keep_alive_s=FOREVER), ResidentView("brief", 300, keep_alive_s=1)]
    assert [r.id for r in eviction_order(residents)] == ["brief", "forever"]


def test_evicts_only_as_many_as_needed():
    residents = [ResidentView(f"m{i}", 200, last_used=i) for i in range(5)]
    assert plan(300, residents, 1000).evict == ("m0", "m1")


def test_never_evicts_busy_models_drains_them_instead():
    residents = [ResidentView("busy", 600, busy=True), ResidentView("idle", 100)]
    decision = plan(700, residents, 1000)
    assert decision.verdict is Verdict.DRAIN and decision.drain == ("busy",)


def test_idle_models_alone_suffice_no_drain():
    residents = [ResidentView("busy", 300, busy=True), ResidentView("idle", 600)]
    assert plan(600, residents, 1000) == plan(600, residents, 1000)
    decision = plan(600, residents, 1000)
    assert decision.verdict is Verdict.FITS and decision.evict == ("idle",)


def test_waits_when_draining_models_already_make_room():
    residents = [ResidentView("going", 600, busy=True, draining=True)]
    assert plan(700, residents, 1000).verdict is Verdict.WAIT


def test_wanted_models_are_neither_evicted_nor_drained():
    residents = [ResidentView("wanted", 600, wanted=True), ResidentView("wanted-busy", 300, busy=True, wanted=True)]
    assert plan(500, residents, 1000).verdict is Verdict.WAIT


def test_pinned_models_are_never_victims():
    residents = [ResidentView("pinned", 500, pinned=True), ResidentView("idle", 300)]
    decision = plan(500, residents, 1000)
    assert decision.verdict is Verdict.FITS and decision.evict == ("idle",)


def test_ledger_tracks_peak_and_drops():
    ledger = Ledger(1000)
    ledger.set("a", 400)
    ledger.set("b", 500)
    ledger.drop("a")
    ledger.set("a", 100)
    assert ledger.used_mb == 600 and ledger.peak_mb == 900


def test_the_estimate_is_raised_by_the_memory_hint_and_by_what_a_load_measured():
    estimate = MemoryEstimate(weights_mb=300, kv_cache_mb=100, runtime_mb=60)
    assert expected_mb(estimate, None, 0) == 460
    assert expected_mb(estimate, 1000, 0) == 1060  # the hint stands in for the model, not its runtime
    assert expected_mb(estimate, None, 900) == 900


def test_refusal_names_the_budget_or_the_pinned_models():
    assert refusal(500, [ResidentView("a", 900)], 1000) is None  # evicting "a" makes room
    assert "whole budget" in refusal(1200, [], 1000)
    assert "pinned" in refusal(600, [ResidentView("p", 500, pinned=True)], 1000)


def test_a_load_over_its_estimate_evicts_idle_models_until_back_under():
    residents = [ResidentView("loaded", 700), ResidentView("old", 200, last_used=1), ResidentView("new", 200, last_used=2),
                 ResidentView("busy", 100, busy=True)]
    assert over_budget_victims("loaded", residents, 1000) == (("old",), 0.0)  # 200 over: the older goes
    assert over_budget_victims("loaded", residents, 900) == (("old", "new"), 0.0)
    assert over_budget_victims("loaded", residents[:2], 1000) == ((), 0.0)


def test_a_load_over_its_estimate_with_nothing_idle_reports_the_overrun():
    residents = [ResidentView("loaded", 900), ResidentView("pinned", 200, pinned=True)]
    assert over_budget_victims("loaded", residents, 1000) == ((), 100.0)


def test_after_release_an_idle_model_expires_after_its_keep_alive():
    assert after_release(draining=False, unload_requested=False, others_waiting=False, pinned=False,
                         keep_alive_s=300) == Release(expire_in_s=300)


def test_after_release_keep_alive_zero_unloads_and_forever_or_pinned_keeps():
    common = {"draining": False, "unload_requested": False, "others_waiting": False}
    assert after_release(**common, pinned=False, keep_alive_s=0) == Release(unload="keep_alive")
    assert after_release(**common, pinned=False, keep_alive_s=FOREVER) == Release()
    assert after_release(**common, pinned=True, keep_alive_s=0) == Release()


def test_after_release_a_draining_model_unloads_for_its_waiters_or_the_admin():
    assert after_release(draining=True, unload_requested=False, others_waiting=True, pinned=False,
                         keep_alive_s=300) == Release(unload="drained")
    assert after_release(draining=True, unload_requested=True, others_waiting=False, pinned=False,
                         keep_alive_s=300) == Release(unload="admin")


def test_after_release_a_draining_model_nobody_waits_for_serves_again():
    assert after_release(draining=True, unload_requested=False, others_waiting=False, pinned=False,
                         keep_alive_s=300) == Release(resume=True, expire_in_s=300)


# ---- the warm tier ---------------------------------------------------------------------------------


def test_an_evicted_model_parks_when_the_ram_budget_has_room():
    assert ram_room(400, [WarmView("p", 500)], 1000).park
    assert ram_room(400, [WarmView("p", 500)], 1000).drop == ()


def test_parking_drops_the_least_recently_used_copies_first_and_only_as_many_as_needed():
    warm = [WarmView("new", 300, last_used=30), WarmView("old", 300, last_used=10), WarmView("mid", 300, last_used=20)]
    room = ram_room(500, warm, 1000)
    assert room.park and room.drop == ("old", "mid")


def test_a_copy_being_loaded_is_never_dropped_to_park_another():
    warm = [WarmView("loading", 800, last_used=0, in_use=True)]
    room = ram_room(500, warm, 1000)
    assert not room.park and "being loaded" in room.reason


def test_a_model_larger_than_the_ram_budget_or_a_budget_of_zero_is_dropped():
    assert not ram_room(1200, [], 1000).park
    assert "warm tier is off" in ram_room(10, [], 0).reason


def test_a_park_that_wrote_more_than_estimated_drops_older_copies_back_under_the_budget():
    warm = [WarmView("just-parked", 700, last_used=50), WarmView("old", 200, last_used=1),
            WarmView("newer", 200, last_used=2)]
    assert ram_over_budget("just-parked", warm, 1000) == ("old",)
    assert ram_over_budget("just-parked", warm, 2000) == ()


def test_a_cpu_plan_beside_a_gpu_is_charged_nothing_on_the_device():
    estimate = MemoryEstimate(weights_mb=300, kv_cache_mb=100, runtime_mb=60)
    assert device_mb(estimate, "cpu", "cuda").total_mb == 0 and device_mb(estimate, "cpu", "cuda").host_mb == 460
    assert device_mb(estimate, "cpu", "cpu") == estimate and device_mb(estimate, "cuda", "cuda") == estimate
