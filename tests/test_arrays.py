"""The array layout of a SLURM submission (hpclab.launch.arrays): however a sweep is split
(cluster.max_array_size, the controller's MaxArraySize), every run is in exactly one array, no
array is larger than allowed, the arrays together never run more than
cluster.array_parallelism tasks at once, and chained arrays wait only for an earlier array of
their own lane. Pure functions: no controller needed.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from hpclab.launch import arrays
from hpclab.launch.arrays import ArraySpec, array_layout, array_size, describe_layout, plan_arrays, share_out

PROPERTIES = settings(max_examples=150, deadline=None, derandomize=True, database=None)


def simulate(layout: list[ArraySpec]) -> tuple[int, int, int]:
    """(most tasks at once, tasks run, rounds) of a layout under SLURM's rules, in rounds of
    equal tasks: an array runs at most its own limit of tasks at a time, and starts only once
    the array it depends on (afterany) has ended."""
    left = [spec.tasks for spec in layout]
    most = ran = rounds = 0
    while any(left):
        ended = [n == 0 for n in left]
        now = [
            min(n, spec.parallelism) if spec.after is None or ended[spec.after] else 0 for n, spec in zip(left, layout)
        ]
        assert sum(now), "no array can start: a dependency that never ends"
        # as many rounds as pass before one running array has fewer tasks left than it runs at once
        same = min(n // k for n, k in zip(left, now) if k)
        most, ran, rounds = max(most, sum(now)), ran + same * sum(now), rounds + same
        left = [n - same * k for n, k in zip(left, now)]
    return most, ran, rounds


def lanes_of(layout: list[ArraySpec]) -> list[list[int]]:
    """The chains of a layout (indices in order): an array without ``after`` starts one, every
    other array follows the one it waits for. Fails when two arrays wait for the same one."""
    lanes: list[list[int]] = []
    lane_of: dict[int, int] = {}
    for index, spec in enumerate(layout):
        if spec.after is None:
            lane_of[index] = len(lanes)
            lanes.append([index])
            continue
        lane = lanes[lane_of[spec.after]]
        assert lane[-1] == spec.after, f"array {index} waits for {spec.after}, which another array already follows"
        lane.append(index)
        lane_of[index] = lane_of[spec.after]
    return lanes


@st.composite
def sweeps(draw: st.DrawFn) -> tuple[int, int, int]:
    """(tasks, size, limit) with up to 30 arrays: clusters' MaxArraySize keeps real sweeps at a few."""
    size = draw(st.integers(1, 1500))
    count = draw(st.integers(0, 30))
    tasks = 0 if count == 0 else (count - 1) * size + draw(st.integers(1, size))
    return tasks, size, draw(st.integers(1, 200))


@PROPERTIES
@given(sweeps())
def test_every_run_is_in_exactly_one_array_and_no_array_is_larger_than_allowed(sweep):
    tasks, size, limit = sweep
    layout = array_layout(tasks, size, limit)
    assert [(s.start, s.stop) for s in layout] == [(a, min(a + size, tasks)) for a in range(0, tasks, size)]
    assert sum(s.tasks for s in layout) == tasks
    assert all(1 <= s.tasks <= size for s in layout)


@PROPERTIES
@given(sweeps())
def test_the_arrays_together_never_run_more_than_the_limit(sweep):
    """Arrays of one lane run one after the other, lanes side by side: the shares of the lanes
    add up to at most the limit, whatever the order tasks end in."""
    tasks, size, limit = sweep
    layout = array_layout(tasks, size, limit)
    lanes = lanes_of(layout)
    assert sum(max(layout[i].parallelism for i in lane) for lane in lanes) <= min(limit, max(tasks, 1))
    most, ran, _ = simulate(layout)
    assert ran == tasks and most <= limit


@PROPERTIES
@given(sweeps())
def test_chained_arrays_wait_for_an_earlier_array_of_their_own_lane(sweep):
    """Dependencies point back (so they have no cycle), form chains, and a chain's arrays share
    one limit, at least one slot and never more than its largest array can use."""
    layout = array_layout(*sweep)
    assert all(s.after is None or 0 <= s.after < i for i, s in enumerate(layout))
    for lane in lanes_of(layout):
        shares = {layout[i].parallelism for i in lane}
        assert len(shares) == 1, f"lane {lane} has several limits: {shares}"
        assert 1 <= shares.pop() <= max(layout[i].tasks for i in lane)


@PROPERTIES
@given(sweeps())
def test_no_slot_is_left_idle_that_a_lane_could_use_and_it_ends_no_later_than_one_chain(sweep):
    tasks, size, limit = sweep
    layout = array_layout(tasks, size, limit)
    lanes = lanes_of(layout)
    shares = [layout[lane[0]].parallelism for lane in lanes]
    if sum(shares) < limit:  # every lane already runs as many tasks as its largest array has
        assert all(share == max(layout[i].tasks for i in lane) for share, lane in zip(shares, lanes))
    _, _, rounds = simulate(layout)
    assert rounds <= sum(-(-s.tasks // limit) for s in layout)  # the arrays one after the other, whole limit each


@PROPERTIES
@given(st.lists(st.lists(st.integers(1, 2000), min_size=1, max_size=5), min_size=1, max_size=8), st.integers(1, 300))
def test_share_out_gives_every_lane_a_slot_and_never_more_than_the_limit(members, parallelism):
    shares = share_out(parallelism, members)
    assert len(shares) == len(members)
    assert all(1 <= share <= max(sizes) for share, sizes in zip(shares, members))
    assert sum(shares) <= max(parallelism, len(members))


@pytest.mark.parametrize(
    "tasks, size, limit, expected",
    [
        # a large limit: side by side, shares in proportion to their sizes, no chaining
        (2500, 1000, 64, [(1000, 26, None), (1000, 25, None), (500, 13, None)]),
        # fewer slots than arrays: one chain with the whole limit (two lanes of %1 would leave one idle)
        (3000, 1000, 2, [(1000, 2, None), (1000, 2, 0), (1000, 2, 1)]),
        (1001, 1000, 2, [(1000, 2, None), (1, 2, 0)]),
        # one array: the limit itself (submitit writes min(tasks, limit))
        (999, 1000, 64, [(999, 64, None)]),
        # a limit above the runs: each array as many slots as it has tasks
        (5, 3, 64, [(3, 3, None), (2, 2, None)]),
        (0, 1000, 64, []),
    ],
)
def test_the_layouts_the_docstring_promises(tasks, size, limit, expected):
    assert [(s.tasks, s.parallelism, s.after) for s in array_layout(tasks, size, limit)] == expected


def test_describe_layout_names_each_array_its_limit_and_what_it_waits_for():
    assert (
        describe_layout(array_layout(2, 1, 1), 1)
        == "2 task(s) in 2 array(s), at most 1 at once: #1 1%1, #2 1%1 after #1"
    )
    assert describe_layout(array_layout(2500, 1000, 64), 64) == (
        "2500 task(s) in 3 array(s), at most 64 at once: #1 1000%26, #2 1000%25, #3 500%13"
    )


@pytest.mark.parametrize("controller, tasks, expected", [(None, 5000, 2000), (1000, 5000, 1000), (4000, 5000, 2000)])
def test_array_size_is_lowered_to_what_the_controller_takes(monkeypatch, controller, tasks, expected):
    """cluster.max_array_size, unless the controller's MaxArraySize - 1 is smaller (None: no
    controller answers, the setting stands)."""
    monkeypatch.setattr(arrays, "max_array_tasks", lambda: controller)
    cluster = OmegaConf.create({"max_array_size": 2000, "array_parallelism": 64})
    assert array_size(cluster, tasks) == expected
    assert [s.tasks for s in plan_arrays(cluster, tasks)] == [expected] * (tasks // expected) + (
        [tasks % expected] if tasks % expected else []
    )
