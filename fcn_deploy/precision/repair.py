"""The INT8 repair's search: the fewest quantized nodes to keep in float until the masks match.

The search knows nothing of backends: it is given the candidate nodes ranked by sensitivity (worst
first) and a function that builds, compiles and checks the engine with a set of nodes kept in
float.  It then

1. grows the reverted prefix of the ranking, 1, 2, 4, 8, ... nodes, until the check passes with a
   margin (or time runs out, or the prefix reaches twice the budget: the ranking is imperfect, and
   step 3 removes what the check does not need);
2. bisects to the shortest passing prefix;
3. tries to put each chosen node back into INT8, least sensitive first, keeping it there when the
   check still passes.  The budget holds for what is left.

A check "passes with a margin" when every fraction gate holds with a quarter of its headroom to
spare (``pixel_agreement >= 0.99 + 0.25 * 0.01`` for INT8's 0.99): an engine that scrapes through on
the check's sizes must not fail at the sizes validation uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from ..events import SILENT, Listener
from ..validation import Thresholds
from ..validation.metrics import METRICS

#: The share of each gate's headroom the repair keeps in reserve.
REPAIR_MARGIN = 0.25
DEFAULT_BUDGET = 24
REPAIR_MODES = ("auto", "float-nodes", "off")
DEFAULT_TIME_LIMIT_S = 1200.0
#: How far past the budget the reverted prefix may grow before step 3 trims it.
GROWTH = 2


@dataclass
class RepairOptions:
    #: ``auto``: check the compiled INT8 engine; when it fails, correct the biases, then search float
    #: nodes; ``float-nodes``: the search without the bias correction; ``off``: check and record only.
    mode: str = "auto"
    #: The most nodes the search may keep in float.
    budget: int = DEFAULT_BUDGET
    #: Seconds the search may take.
    time_limit_s: float = DEFAULT_TIME_LIMIT_S


@dataclass
class Trial:
    """One checked build: the nodes kept in float, and what the check measured."""

    float_nodes: tuple[str, ...]
    passed: bool
    passed_with_margin: bool
    pixel_agreement: float
    min_size_agreement: float
    mean_iu: float
    failures: list[str] = field(default_factory=list)
    #: Pixel agreement per check size, in the check's order.
    size_agreement: list[float] = field(default_factory=list)
    #: What misses the margin when the product thresholds pass.
    margin_failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: Whether the graph's conv biases were corrected (:mod:`.bias`).
    bias_correction: bool = False

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["float_nodes"] = list(self.float_nodes)
        return data


def with_margin(thresholds: Thresholds, margin: float = REPAIR_MARGIN) -> Thresholds:
    """``thresholds`` with each fraction gate of the "at least" kind raised by ``margin`` of its headroom."""
    raised = {}
    for metric in METRICS.values():
        for gate in metric.gates:
            limit = thresholds.get(gate.limit)
            if limit is not None and gate.fraction and gate.at_least:
                raised[gate.limit] = float(limit) + margin * (1.0 - float(limit))
    return thresholds.replace(**raised)


def search(
    ranked: Sequence[str], evaluate: Callable[[tuple[str, ...]], Trial], *, budget: int = DEFAULT_BUDGET,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S, start: tuple[str, ...] = (), listener: Listener = SILENT,
) -> tuple[Trial | None, list[Trial]]:  # fmt: skip
    """The smallest passing set found (None when none within the budget passes) and every trial made.

    ``ranked`` are the candidates, worst first; ``start`` are nodes kept in float whatever happens."""
    deadline = time.monotonic() + time_limit_s
    trials: list[Trial] = []
    seen: dict[tuple[str, ...], Trial] = {}
    # The ranking is imperfect, so the passing prefix may hold nodes the check does not need: the prefix
    # may grow to GROWTH x the budget, and the budget holds for the set left after step 3.
    allowed = max(0, budget - len(start))
    candidates = list(dict.fromkeys(name for name in ranked if name not in start))[: GROWTH * allowed]

    def run(prefix: Sequence[str]) -> Trial | None:
        nodes = tuple(start) + tuple(prefix)
        key = tuple(sorted(nodes))
        if key in seen:
            return seen[key]
        if time.monotonic() > deadline:
            return None
        trial = evaluate(nodes)
        seen[key] = trial
        trials.append(trial)
        listener.advance("repair", 1, description=f"repair: {len(nodes)} float node(s), agreement {trial.pixel_agreement:.4%}"
                         + (" passes" if trial.passed_with_margin else ""))  # fmt: skip
        return trial

    listener.start("repair", total=None, description="repair", unit="trials")
    try:
        # 1. grow the reverted prefix geometrically until it passes
        low, high, size = 0, None, 1
        while size <= len(candidates):
            trial = run(candidates[:size])
            if trial is None:
                return None, trials
            if trial.passed_with_margin:
                high = size
                break
            low = size
            size = min(size * 2, len(candidates)) if size < len(candidates) else len(candidates) + 1
        if high is None:
            return None, trials
        # 2. the shortest passing prefix (passing is taken as monotone in the prefix length)
        while high - low > 1:
            middle = (low + high) // 2
            trial = run(candidates[:middle])
            if trial is None:
                break
            if trial.passed_with_margin:
                high = middle
            else:
                low = middle
        chosen = list(candidates[:high])
        # 3. put back what is not needed, least sensitive first
        for name in reversed(list(chosen)):
            if len(chosen) == 1:
                break
            trial = run([n for n in chosen if n != name])
            if trial is None:
                break
            if trial.passed_with_margin:
                chosen.remove(name)
        best = seen[tuple(sorted(tuple(start) + tuple(chosen)))]
        return (best if len(chosen) <= allowed else None), trials
    finally:
        listener.finish("repair")
