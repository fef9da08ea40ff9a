"""``sdrt serve``: an HTTP service on Ray Serve with in-flight batching of structured requests."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from . import options

EXAMPLE = """examples:
  sdrt serve --engine engines/tiny                      # 127.0.0.1:8000, one replica
  sdrt serve --engine engines/sd15 --replicas 2 --port 9000
  sdrt serve --model tiny --autoscale 1:4               # the torch reference, autoscaled
  sdrt serve --engine engines/sd15 --ray-address ray://head:10001

  curl -s localhost:8000/v1/generate -d '{"prompt": "a red car and a white sheep", "seed": 7}' -o car.png
  curl -s localhost:8000/v1/generate -H 'Accept: application/json' -d '{"prompt": "a cat", "steps": 20}'
  curl -s localhost:8000/healthz;  curl -s localhost:8000/metrics

SIGTERM (or Ctrl-C) stops admission (503), lets running requests finish for --drain-seconds,
then stops Ray Serve and exits 0."""


def add_to(commands) -> None:
    from ..serve.policy import DEFAULT_POLICY, POLICIES

    parser = commands.add_parser(
        "serve", help="serve generation over HTTP (Ray Serve, in-flight batching)",
        description="Serve POST /v1/generate, GET /healthz and GET /metrics on Ray Serve. Each replica holds "
                    "its own engines and batches requests in flight: a request joins the running UNet calls "
                    "at the next step, whatever its number of phrases, and leaves when done.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--engine", type=Path, metavar="DIR", help="engine set each replica runs")
    source.add_argument("--model", help="model for the torch reference instead of engines [default: tiny]")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on [default: 127.0.0.1]")
    parser.add_argument("--port", type=options.positive_int("port", 65535), default=8000,
                        help="port to listen on [default: 8000]")
    scaling = parser.add_mutually_exclusive_group()
    scaling.add_argument("--replicas", type=options.positive_int("replicas", 256), default=1,
                         help="generator replicas, each with its own engines and batcher [default: 1]")
    scaling.add_argument("--autoscale", type=options.int_range("--autoscale"), metavar="MIN:MAX",
                         help="let Ray Serve scale the generator replicas between MIN and MAX")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="join this Ray cluster instead of starting a local one")
    parser.add_argument("--max-batch-rows", type=options.positive_int("max-batch-rows", 4096),
                        help="UNet rows per call, two per request (the engine profile caps it too) "
                             "[default: the profile's]")
    parser.add_argument("--queue-limit", type=options.positive_int("queue-limit", 100_000), default=32,
                        help="requests waiting per replica before new ones get 429 [default: 32]")
    parser.add_argument("--drain-seconds", type=options.positive_int("drain-seconds", 86_400), default=30,
                        help="how long SIGTERM waits for running requests [default: 30]")
    parser.add_argument("--policy", choices=POLICIES, default=DEFAULT_POLICY,
                        help="inflight: requests join at the next step; static: a batch runs to its end before "
                             "the next starts; single: one at a time (for comparisons) [default: inflight]")
    parser.add_argument("--quiet", action="store_true", help="no status lines")
    parser.set_defaults(run=run)


def _require_serving_libraries():
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import ray
        from ray import serve
    except ImportError as error:
        raise UserError(f"serving needs Ray Serve ({error.name} is missing); pip install 'sd-struct-rt[serve]'") \
            from None
    return ray, serve


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise UserError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port or --host") \
                from None


RAY_ADDRESS_WAIT_SECONDS = 10
RAY_HEAD_HINT = ("is the Ray head running there (ray start --head), and is the port its GCS (6379) or client "
                 "(10001) port?")


def _check_ray_address(address: str | None) -> None:
    """A cluster address that answers, checked before ``ray.init``, which would wait on an unreachable
    one for minutes and ignore SIGTERM meanwhile. ``auto`` and ``local`` are Ray's own lookups."""
    if address in (None, "auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--ray-address takes HOST:PORT (or ray://HOST:PORT, or auto), not {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=RAY_ADDRESS_WAIT_SECONDS).close()
    except OSError as error:
        reason = f"nothing answered within {RAY_ADDRESS_WAIT_SECONDS} s" if isinstance(error, TimeoutError) \
            else (error.strerror or type(error).__name__).lower()
        raise UserError(f"--ray-address {address}: {reason}; {RAY_HEAD_HINT}") from None


@contextlib.contextmanager
def _core_logs_held(holding: bool):
    """Ray's core writes a warning line to stderr every second while it tries a cluster address; hold
    them back while joining, so a failure is our one line. Joining starts no daemon of ours."""
    if not holding:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _checked_source(args) -> dict:
    """What the replicas load, checked here so that a bad set is one line, not a crash loop."""
    if args.engine is not None:
        from ..manifest import read_manifest, verify_files

        verify_files(read_manifest(args.engine), args.engine)
        return {"engine": str(args.engine.resolve())}
    from ..model import model_facts

    model = args.model or "tiny"
    model_facts(model)
    return {"model": model}


def _check_scaling(args) -> None:
    """What Ray Serve would refuse only once it has started, refused before."""
    from ..serve.batcher import check_max_batch_rows

    if args.autoscale is not None and not 1 <= args.autoscale[0] <= args.autoscale[1]:
        raise UserError(f"--autoscale MIN:MAX needs 1 <= MIN <= MAX, not {args.autoscale[0]}:{args.autoscale[1]}")
    check_max_batch_rows(args.max_batch_rows, "--max-batch-rows")


def run(args) -> None:
    import logging

    _check_scaling(args)
    source = _checked_source(args)
    _check_port(args.host, args.port)
    _check_ray_address(args.ray_address)
    ray, serve = _require_serving_libraries()
    from ..serve.app import STATE_NAMESPACE, build_app, service_state

    try:
        with _core_logs_held(args.ray_address is not None):
            ray.init(address=args.ray_address, namespace=STATE_NAMESPACE, include_dashboard=False,
                     logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, TimeoutError, RuntimeError) as error:  # it answered, but is no Ray head we can join
        raise UserError(f"--ray-address {args.ray_address}: Ray could not join a cluster there "
                        f"({type(error).__name__}); {RAY_HEAD_HINT}") from None
    options.install_signal_handlers()  # Ray's core took SIGTERM over; a service drains on it
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # our status lines say what matters
    try:
        state_name = f"sdrt-state-{args.port}"
        state = service_state(state_name)
        try:
            serve.start(http_options={"host": args.host, "port": args.port},
                        logging_config={"log_level": "WARNING", "enable_access_log": False})
        except (RuntimeError, ray.exceptions.GetTimeoutError) as error:  # a proxy that never came up
            raise UserError(f"Ray Serve did not start its HTTP proxy: {type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else 'no reason given'}") from None
        scaling = ({"autoscaling_config": {"min_replicas": args.autoscale[0], "max_replicas": args.autoscale[1],
                                           "target_ongoing_requests": args.queue_limit // 2 or 1}}
                   if args.autoscale else {"num_replicas": args.replicas})
        application = build_app({**source, "policy": args.policy, "max_batch_rows": args.max_batch_rows,
                                 "queue_limit": args.queue_limit, "state_name": state_name, **scaling})
        options.announce("starting Ray Serve and loading the engines in each replica", args)
        try:
            try:
                serve.run(application, name="sdrt", route_prefix="/")
            except RuntimeError as error:
                raise UserError(f"the service did not start: {str(error).splitlines()[0]}") from None
            options.announce(f"serving on http://{args.host}:{args.port} ({args.policy} batching); "
                             "SIGTERM or Ctrl-C drains and stops", args)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:  # SIGTERM or Ctrl-C, even while starting: the normal way to stop
            options.PENDING_SIGNALS.clear()
        options.announce(f"draining: new requests get 503, running ones have {args.drain_seconds} s", args)
        state.drain.remote()
        deadline = time.monotonic() + args.drain_seconds
        while time.monotonic() < deadline and ray.get(state.busy_total.remote()) > 0:
            time.sleep(0.2)
        serve.shutdown()
        ray.kill(state)  # detached, so that replicas find it; on a joined cluster it must not outlive us
    finally:
        ray.shutdown()
    options.announce("stopped", args)
