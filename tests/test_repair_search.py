"""The INT8 repair's search (:func:`fcn_deploy.precision.repair.search`) against a check whose answer is
known: it passes exactly when the float set covers the nodes that break.  The real search runs in
``tests/test_repair.py`` on a trained model; here each rule of the search has a case of its own."""

from __future__ import annotations

import pytest

from fcn_deploy.events import Recorder
from fcn_deploy.precision.repair import Trial, search, with_margin
from fcn_deploy.validation import default_thresholds

RANKED = [f"n{i}" for i in range(12)]  # worst first


def check(needed: set[str], calls: list[tuple[str, ...]] | None = None):
    """A check that passes with the margin when every ``needed`` node is kept in float."""

    def evaluate(nodes: tuple[str, ...]) -> Trial:
        if calls is not None:
            calls.append(nodes)
        ok = needed <= set(nodes)
        return Trial(tuple(nodes), ok, ok, 0.995 if ok else 0.98, 0.99, 0.98 if ok else 0.95)

    return evaluate


def test_the_search_keeps_exactly_the_nodes_that_break():
    best, trials = search(RANKED, check({"n0", "n5"}), budget=8)
    assert best is not None and sorted(best.float_nodes) == ["n0", "n5"]
    assert [len(t.float_nodes) for t in trials[:4]] == [1, 2, 4, 8]  # the prefix grows 1, 2, 4, 8
    assert not [t for t in trials if t.passed_with_margin and len(t.float_nodes) < 2]


def test_nothing_within_the_budget_is_none_and_the_prefix_grows_to_twice_the_budget():
    best, trials = search(RANKED, check({"n0", "n9"}), budget=4)  # n9 lies past 2 x 4 candidates
    assert best is None and max(len(t.float_nodes) for t in trials) == 8


def test_a_set_found_past_the_budget_and_not_trimmed_under_it_is_refused():
    best, _ = search(RANKED, check({"n0", "n1", "n2", "n3", "n4"}), budget=4)  # the prefix of 8 passes, 5 are needed
    assert best is None


def test_step_three_puts_back_the_least_sensitive_node_first():
    """n0 and n3 break; the first passing prefix is n0..n3, and the bisection tries n0..n2.  Step 3
    then tries each chosen node back in INT8, the least sensitive (last ranked) first: n3 is known to
    fail already, so n2 is the first new trial."""
    calls: list[tuple[str, ...]] = []
    best, _ = search(RANKED, check({"n0", "n3"}, calls), budget=4)
    assert best is not None and sorted(best.float_nodes) == ["n0", "n3"]
    first_passing = calls.index(("n0", "n1", "n2", "n3"))
    assert calls[first_passing + 1] == ("n0", "n1", "n2")  # the bisection
    assert calls[first_passing + 2] == ("n0", "n1", "n3")  # step 3: n2 back in INT8
    assert len(calls) == len(set(calls))  # no set is checked twice


def test_nodes_given_by_hand_stay_float_and_count_against_the_budget():
    best, trials = search(RANKED, check({"n2"}), budget=3, start=("given",))
    assert best is not None and best.float_nodes == ("given", "n2")
    assert all(t.float_nodes[0] == "given" for t in trials)


def test_the_time_limit_stops_the_search_with_what_was_tried():
    best, trials = search(RANKED, check({"n11"}), budget=12, time_limit_s=0.0)
    assert best is None and trials == []


def test_each_trial_is_shown_as_progress():
    recorder = Recorder()
    _, trials = search(RANKED, check({"n1"}), budget=4, listener=recorder)
    assert [e[0] for e in recorder.events] == ["start"] + ["advance"] * len(trials) + ["finish"]


@pytest.mark.parametrize(("limit", "raised"), [("pixel_agreement", 0.9925), ("size_floor", 0.985), ("min_mean_iu", 0.9775)])
def test_the_margin_is_a_quarter_of_each_gates_headroom(limit, raised):
    assert with_margin(default_thresholds("int8"))[limit] == pytest.approx(raised)


def test_small_check_sizes_pool_several_images_within_the_profiles_batch():
    from fcn_deploy.backends import Profile
    from fcn_deploy.int8_check import CHECK_PIXELS, check_batches, check_sizes

    profile = Profile((1, 32, 32), (1, 256, 256), (8, 1024, 1024))
    sizes = check_sizes(profile)
    batches = check_batches(sizes, profile)
    assert batches[(35, 45)] == 8 and batches[sizes[-1]] == 1  # the smallest pools 8 images, the largest one
    assert all(n * h * w >= CHECK_PIXELS or n == 8 for (h, w), n in batches.items())
    single = Profile((1, 32, 32), (1, 256, 256), (1, 1024, 1024))
    assert set(check_batches(sizes, single).values()) == {1}  # never past the profile's batch
