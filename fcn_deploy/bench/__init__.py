"""benchmark: engines against the PyTorch eager baseline on this machine (:mod:`.local`, each timed
in its own worker process by :mod:`.workers`), or a Triton server under concurrency (:mod:`.server`).
Functions return reports and print nothing; the CLI renders them (:mod:`fcn_deploy.render.bench`)."""

from .flops import count_flops
from .local import find_reference, ratio, run_benchmark, summarise
from .peaks import FLOP_COUNT, Peak, measure_peaks, peak_kind
from .server import parse_concurrency, run_server_benchmark
from .workers import BENCH_SEED, BLOCK, SETTLE_S, Contender, check_runs, infer_call, scene_batch, time_contenders

__all__ = [
    "BENCH_SEED", "BLOCK", "FLOP_COUNT", "Peak", "SETTLE_S", "Contender", "check_runs", "count_flops", "find_reference", "infer_call",
    "measure_peaks", "peak_kind", "parse_concurrency", "ratio", "run_benchmark", "run_server_benchmark", "scene_batch", "summarise",
    "time_contenders",
]  # fmt: skip
