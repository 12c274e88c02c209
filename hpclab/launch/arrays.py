"""How a submission's pending runs are laid out as SLURM job arrays: how many arrays, their
sizes, each one's ``%`` limit and which array it waits for (``--dependency=afterany``).

Pure functions of counts (:func:`array_layout`, :func:`describe_layout`), plus
:func:`array_size`, which asks the controller how large one array may be here.
:func:`plan_arrays` is what the submitter calls.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass

from omegaconf import DictConfig

from hpclab.launch.slurm import max_array_tasks

log = logging.getLogger("hpclab")


@dataclass(frozen=True)
class ArraySpec:
    """One job array of a submission: pending runs ``start:stop``, its own ``%`` limit, and the
    array of the same lane it waits for (``--dependency=afterany``), if any."""

    start: int
    stop: int
    parallelism: int
    after: int | None = None  # index into the layout

    @property
    def tasks(self) -> int:
        return self.stop - self.start


def array_layout(tasks: int, size: int, parallelism: int) -> list[ArraySpec]:
    """Split ``tasks`` runs into arrays of at most ``size`` that together never run more than
    ``parallelism`` tasks at once (SLURM's ``%P`` limit holds per array, not per sweep).

    The arrays are dealt to lanes: arrays of one lane run one after the other (afterany: the
    next starts once the one before has ended, whatever its outcome), lanes run side by side
    and share the limit. Every split of the arrays into 1..min(parallelism, arrays) lanes is
    costed in rounds of equal tasks (sum over a lane's arrays of ceil(tasks / its share)) and
    the one that ends soonest is taken; on a tie, the one with more lanes, since a lane never
    waits for a slow or requeued task of another. So a few arrays under a large limit run side
    by side with shares in proportion to their sizes (2500 runs, arrays of 1000, limit 64:
    26 + 25 + 13), and a limit smaller than the arrays' count chains them (3000 runs, limit 2:
    three arrays of %2, one after the other, where two lanes of %1 would leave a slot idle for
    the last third).
    """
    sizes = [min(size, tasks - start) for start in range(0, tasks, size)]
    if not sizes:
        return []
    best: tuple[int, list[int], list[int]] | None = None
    for lanes in range(1, min(parallelism, len(sizes)) + 1):
        lane_of, load = [], [0] * lanes
        for n in sizes:  # each array to the lane with the fewest tasks so far, in order
            lane = min(range(lanes), key=lambda i: (load[i], i))
            lane_of.append(lane)
            load[lane] += n
        members = [[n for n, at in zip(sizes, lane_of) if at == lane] for lane in range(lanes)]
        shares = share_out(parallelism, members)
        finish = max(sum(-(-n // share) for n in arrays) for arrays, share in zip(members, shares))
        if best is None or finish <= best[0]:
            best = (finish, lane_of, shares)
    _, lane_of, shares = best
    layout, last = [], [None] * len(shares)
    start = 0
    for index, (n, lane) in enumerate(zip(sizes, lane_of)):
        layout.append(ArraySpec(start, start + n, shares[lane], last[lane]))
        last[lane] = index
        start += n
    return layout


def share_out(parallelism: int, members: list[list[int]]) -> list[int]:
    """Slots per lane (lanes of chained arrays of these sizes): one each, then one at a time
    to the lane that would take the most rounds, never beyond its largest array."""
    shares = [1] * len(members)
    rounds = lambda lane: sum(-(-n // shares[lane]) for n in members[lane])  # noqa: E731
    heap = [(-rounds(i), i) for i in range(len(members)) if shares[i] < max(members[i])]
    heapq.heapify(heap)
    for _ in range(parallelism - len(members)):
        if not heap:
            break
        _, lane = heapq.heappop(heap)
        shares[lane] += 1
        if shares[lane] < max(members[lane]):
            heapq.heappush(heap, (-rounds(lane), lane))
    return shares


def describe_layout(layout: list[ArraySpec], parallelism: int) -> str:
    """One line: the arrays of a submission, their limits and chaining."""
    parts = [
        f"{spec.tasks}%{spec.parallelism}" + (f" after #{spec.after + 1}" if spec.after is not None else "")
        for spec in layout
    ]
    return (
        f"{sum(s.tasks for s in layout)} task(s) in {len(layout)} array(s), at most {parallelism} at once: "
        + ", ".join(f"#{i + 1} {part}" for i, part in enumerate(parts))
    )


def array_size(cluster: DictConfig, tasks: int) -> int:
    """cluster.max_array_size, lowered to what this controller takes (MaxArraySize - 1)."""
    size = cluster.max_array_size
    limit = max_array_tasks()
    if limit is not None and size > limit:  # sbatch would refuse the whole array
        if tasks > limit:
            log.info(
                "cluster.max_array_size=%d is above this cluster's MaxArraySize - 1 = %d: arrays of %d tasks",
                size,
                limit,
                limit,
            )
        size = limit
    return size


def plan_arrays(cluster: DictConfig, tasks: int) -> list[ArraySpec]:
    """The arrays that submit ``tasks`` runs under ``cluster``'s settings and this controller's
    MaxArraySize."""
    return array_layout(tasks, array_size(cluster, tasks), cluster.array_parallelism)
