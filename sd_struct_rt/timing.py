"""Timing harness: warm-up, several rounds, median and spread, ratios from interleaved runs.

Candidates are run round-robin inside each round (in an order that rotates every round), so
slow drifts of the machine (thermal, other processes) hit all of them alike; a ratio is the
median of the per-round ratios, never a ratio of separately measured medians.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


@dataclass(frozen=True)
class Timing:
    samples: tuple[float, ...]  # seconds

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples) * 1e3

    @property
    def spread_ms(self) -> tuple[float, float]:
        """Interquartile range in milliseconds."""
        quartiles = statistics.quantiles(self.samples, n=4) if len(self.samples) > 1 else [self.samples[0]] * 3
        return quartiles[0] * 1e3, quartiles[2] * 1e3

    def as_dict(self) -> dict:
        low, high = self.spread_ms
        return {"median_ms": round(self.median_ms, 3), "p25_ms": round(low, 3), "p75_ms": round(high, 3),
                "runs": len(self.samples)}


def interleaved(candidates: dict[str, Callable[[], object]], warmup: int = 3, rounds: int = 15,
                synchronize: Callable[[], None] = lambda: None) -> dict[str, Timing]:
    """Time every candidate once per round, rotating the order each round."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    synchronize()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            candidates[name]()
            synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(values)) for name, values in samples.items()}


def ratio(timings: dict[str, Timing], numerator: str, denominator: str) -> float:
    """Median over rounds of ``numerator / denominator``, both timed in the same round."""
    pairs = zip(timings[numerator].samples, timings[denominator].samples)
    return statistics.median(a / b for a, b in pairs)


def machine_description() -> dict[str, object]:
    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        info["cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        info["cpus"] = os.cpu_count()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_results(path: Path, result: dict) -> None:
    """A benchmark's JSON, written whole (atomically) into ``path``, its folder made if needed."""
    from .files import write_bytes_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomically(path, (json.dumps(result, indent=2) + "\n").encode(), "benchmark results")
