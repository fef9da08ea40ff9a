"""Open-loop load against ``sdrt serve``: one request at a time vs static vs in-flight batching.

    python benchmarks/serve_load.py [--engine DIR] [--rates 1,2,4,6] [--requests 40] [--out FILE.json]
                                    [--plot docs/serve_load.png]

For each policy a server is started on 127.0.0.1 (same engines, same settings), warmed up, and
then fed Poisson arrivals at each rate: arrival times are drawn in advance (seeded), and each
request is sent at its time whether or not earlier ones have finished (open loop), so a slow
policy builds a queue instead of slowing the load down. Each rate is bounded in requests and
in time. Reported per policy and rate: throughput, p50/p95/p99 latency, and the deepest queue
seen (sampled from /metrics), which says whether requests were waiting.

Requests mix prompts with 0 to 3 phrases and 10, 20 or 30 steps, as a service sees them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sd_struct_rt.serve.policy import POLICIES as REGISTRY
from sd_struct_rt.timing import machine_description, write_results

POLICIES = tuple(reversed(REGISTRY))  # the baselines first (single, static), in-flight batching last
PROMPTS = ["a red car and a white sheep", "cats", "a big dog on a small mat with a blue ball", "a cat on a mat",
           "a green bench and a red car", "a yellow bird", "a blue cup on a wooden table", "two dogs"]
SIZE = 64


def default_engines() -> Path:
    """A tiny engine set that takes 8 prompts per call, built into the cache once."""
    from sd_struct_rt.contract import Profile
    from sd_struct_rt.export.build import build_engine_set
    from sd_struct_rt.paths import cache_dir

    folder = cache_dir() / "benchmarks" / "tiny-serve-onnxruntime"
    if not (folder / "manifest.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        build_engine_set("tiny", "onnxruntime", "values", Profile(batch=(1, 8), size=(SIZE, SIZE), levels=4), None,
                         folder)
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(engines: Path, policy: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    sdrt = str(Path(sys.executable).with_name("sdrt"))
    process = subprocess.Popen([sdrt, "serve", "--engine", str(engines), "--port", str(port), "--policy", policy,
                                "--queue-limit", "100000", "--quiet"], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    raise SystemExit("serve_load.py: error: the server did not become healthy")


def requests_for(rate: float, count: int, seconds: float, seed: int) -> list[tuple[float, dict]]:
    rng = random.Random(seed)
    arrivals, now = [], 0.0
    while len(arrivals) < count:
        now += rng.expovariate(rate)
        if now > seconds:
            break
        body = {"prompt": rng.choice(PROMPTS), "seed": rng.randrange(1 << 30), "steps": rng.choice((10, 20, 30)),
                "width": SIZE, "height": SIZE}
        arrivals.append((now, body))
    return arrivals


async def run_load(url: str, arrivals: list[tuple[float, dict]]) -> dict:
    queue_depths: list[float] = []
    latencies: list[float] = []
    failures = 0
    async with httpx.AsyncClient(timeout=600) as client:
        stop = asyncio.Event()

        async def sample_queue():
            while not stop.is_set():
                text = (await client.get(f"{url}/metrics")).text
                depth = next(float(line.split()[1]) for line in text.splitlines()
                             if line.startswith("sdrt_queue_depth "))
                queue_depths.append(depth)
                await asyncio.sleep(0.25)

        async def one(at: float, body: dict):
            nonlocal failures
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - started)))
            sent = time.perf_counter()
            response = await client.post(f"{url}/v1/generate", json=body)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - sent)
            else:
                failures += 1

        sampler = asyncio.create_task(sample_queue())
        started = time.perf_counter()
        await asyncio.gather(*(one(at, body) for at, body in arrivals))
        elapsed = time.perf_counter() - started
        stop.set()
        await sampler
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"requests": len(arrivals), "failed": failures, "seconds": round(elapsed, 1),
            "throughput_per_s": round(len(latencies) / elapsed, 3),
            "p50_s": round(statistics.median(latencies), 3), "p95_s": round(quantiles[94], 3),
            "p99_s": round(quantiles[98], 3), "deepest_queue": max(queue_depths, default=0)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for policy, rows in result["policies"].items():
        rates = sorted(rows, key=float)
        axis.plot([float(rate) for rate in rates], [rows[rate]["p95_s"] for rate in rates], marker="o", label=policy)
    axis.set_xlabel("offered load (requests/s, Poisson)")
    axis.set_ylabel("p95 latency (s)")
    axis.set_yscale("log")
    axis.set_title("sdrt serve, tiny engines, 64x64, 10-30 steps\n" + result["machine"].get("processor", ""),
                   fontsize=9)
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", type=Path, help="engine set to serve [default: tiny, 8 prompts per call]")
    parser.add_argument("--rates", default="1,2,4,6")
    parser.add_argument("--requests", type=int, default=40, help="at most this many requests per rate")
    parser.add_argument("--seconds", type=float, default=60, help="arrivals stop after this long per rate")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "serve_load_cpu.json")
    parser.add_argument("--plot", type=Path, default=Path(__file__).parents[1] / "docs" / "serve_load.png")
    args = parser.parse_args()

    engines = args.engine or default_engines()
    rates = [float(rate) for rate in args.rates.split(",")]
    result = {"benchmark": "open-loop Poisson load on sdrt serve, one replica, same engines for every policy",
              "engines": str(engines), "machine": machine_description(), "rates": rates,
              "requests_per_rate": args.requests, "policies": {}}
    for policy in args.policies.split(","):
        process, url = start_server(engines, policy)
        try:
            asyncio.run(run_load(url, requests_for(2.0, 4, 10, seed=0)))  # warm-up
            result["policies"][policy] = {}
            for rate in rates:
                row = asyncio.run(run_load(url, requests_for(rate, args.requests, args.seconds, seed=int(rate * 10))))
                result["policies"][policy][str(rate)] = row
                print(policy, rate, json.dumps(row), flush=True)
        finally:
            process.terminate()
            process.wait(timeout=120)
    if "static" in result["policies"] and "inflight" in result["policies"]:
        result["inflight_over_static_p95"] = {
            rate: round(result["policies"]["inflight"][rate]["p95_s"] / result["policies"]["static"][rate]["p95_s"], 3)
            for rate in result["policies"]["inflight"]}
    result["date"] = time.strftime("%Y-%m-%d")
    write_results(args.out, result)
    plot(result, args.plot)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
