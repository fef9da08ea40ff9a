"""The Ray Serve application: a router in front of generator replicas, and one state actor.

* ``Router`` (FastAPI ingress, light): parses and checks the HTTP body, answers ``/healthz`` and
  ``/metrics``, and forwards a request to a generator. Because it is a separate deployment, a
  generator replica that dies mid-request still gets its client a one-line JSON 503, and Ray
  restarts the replica behind it.
* ``Generator`` (one or many replicas): each holds its own engines and its own ``Batcher``; it
  checks every input before a request reaches a batch.
* ``ServiceState`` (a named actor, created by whichever deployment starts first): the draining
  flag, and the Prometheus metrics of the whole service (replicas report to it), so ``/metrics``
  is one coherent page whatever the number of replicas.

``build_app`` makes the application from plain arguments: ``sdrt serve`` calls it, and so does
``serve deploy`` through deploy/serve_config.yaml.
"""

# No "from __future__ import annotations" here: FastAPI reads the route handlers' annotations
# (Request) as objects, through Ray Serve's ingress wrapper.
import asyncio
import base64
import json
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InputError, UserError
from .policy import DEFAULT_POLICY, policy_named

STATE_NAMESPACE = "sdrt"
MAX_BODY_BYTES = 64 * 1024  # a prompt is at most 1000 characters; this is generous
# HTTP field -> (the pipeline's parameter, JSON types it takes)
FIELDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "prompt": ("prompt", (str,)),
    "negative_prompt": ("negative_prompt", (str,)),
    "seed": ("seed", (int,)),
    "steps": ("num_inference_steps", (int,)),
    "guidance": ("guidance_scale", (int, float)),
    "width": ("width", (int,)),
    "height": ("height", (int,)),
    "mode": ("mode", (str,)),
    "parser": ("parser", (str,)),
    "binding": ("binding", (str,)),
    "phrases": ("phrases", (list,)),
    "scheduler": ("scheduler", (str,)),
}
FIELD_OF = {parameter: name for name, (parameter, _) in FIELDS.items()}  # the pipeline's parameter -> HTTP field
RETRY_AFTER_SECONDS = 1
STATE_NAME = "sdrt-state"


def service_state(name: str = STATE_NAME):
    """The service's state actor, created on first use (detached: it outlives any one replica)."""
    import ray

    return ray.remote(ServiceState).options(name=name, namespace=STATE_NAMESPACE, get_if_exists=True,
                                            lifetime="detached", num_cpus=0).remote()


def pipeline_arguments(body: Any) -> dict[str, Any]:
    """The pipeline's keyword arguments from a request body, or ``InputError`` naming the field.

    Values are checked by the pipeline itself (``check_inputs``); here only the shape of the JSON.
    """
    if not isinstance(body, dict):
        raise InputError("the body must be a JSON object with at least a 'prompt'")
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
    if "prompt" not in body:
        raise InputError("field 'prompt' is required", parameter="prompt", leads=False)
    arguments = {}
    for name, value in body.items():
        parameter, types = FIELDS[name]
        if isinstance(value, bool) or not isinstance(value, types):
            kinds = " or ".join({str: "a string", int: "a whole number", float: "a number",
                                 list: "a list of strings"}[kind] for kind in types)
            raise InputError(f"field {name!r} must be {kinds}, not {json.dumps(value)[:40]}", parameter=parameter,
                             leads=False)
        arguments[parameter] = value
    return arguments


def error_body(error: BaseException) -> dict[str, str]:
    """The JSON body of a refusal: ``{"error": its one line}``, plus ``"field"`` when the error is
    about one; the line then names the field as the HTTP body does (``steps``, not the pipeline's
    ``num_inference_steps``), by the error's parameter, never by editing its text."""
    field = FIELD_OF.get(error.parameter) if isinstance(error, InputError) else None
    if field is None:
        return {"error": str(error)}
    return {"error": error.named(field), "field": field}


class ServiceState:
    """Draining flag and the service's metrics (prometheus_client), shared by every replica."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # *_created timestamps only add noise to a scrape
        self.registry = CollectorRegistry()
        self.draining_since = None
        self.busy: dict[str, int] = {}
        self.queued: dict[str, int] = {}
        self.requests = Counter("sdrt_requests", "Requests answered, by HTTP status", ["status"],
                                registry=self.registry)
        self.request_seconds = Histogram("sdrt_request_seconds", "Seconds from arrival to response",
                                         buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.queue_depth = Gauge("sdrt_queue_depth", "Requests waiting for a batch, all replicas",
                                 registry=self.registry)
        self.active_rows = Gauge("sdrt_active_rows", "UNet rows of running requests, all replicas",
                                 registry=self.registry)
        self.batch_rows = Histogram("sdrt_unet_batch_rows", "Rows per UNet call (two per request)",
                                    buckets=(2, 4, 6, 8, 12, 16, 24, 32, 64), registry=self.registry)
        self.batch_requests = Histogram("sdrt_unet_batch_requests", "Requests sharing one UNet call",
                                        buckets=(1, 2, 3, 4, 6, 8, 16, 32), registry=self.registry)
        self.step_seconds = Histogram("sdrt_unet_step_seconds", "Seconds per UNet call",
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                      registry=self.registry)
        self.active: dict[str, int] = {}

    def drain(self) -> None:
        self.draining_since = self.draining_since or time.time()

    def draining(self) -> bool:
        return self.draining_since is not None

    def request_done(self, status: int, seconds: float) -> None:
        self.requests.labels(status=str(status)).inc()
        self.request_seconds.observe(seconds)

    def unet_call(self, rows: int, requests: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.step_seconds.observe(seconds)

    def replica_load(self, replica: str, queued: int, busy: int, active_rows: int) -> None:
        self.queued[replica], self.busy[replica], self.active[replica] = queued, busy, active_rows
        self.queue_depth.set(sum(self.queued.values()))
        self.active_rows.set(sum(self.active.values()))

    def busy_total(self) -> int:
        return sum(self.busy.values())

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=1000, graceful_shutdown_timeout_s=600)
class Generator:
    """Engines (or the torch reference) and their batcher, in one replica."""

    def __init__(self, source: dict, policy: str, max_batch_rows: int | None, queue_limit: int, state_name: str):

        from ..pipeline import StructuredDiffusionPipeline
        from .batcher import Batcher, Observer

        self.state = service_state(state_name)
        if source.get("engine"):
            self.pipe = StructuredDiffusionPipeline.from_engines(source["engine"])
        else:
            self.pipe = StructuredDiffusionPipeline.from_pretrained(source["model"])
        # Warm: the first call of a session pays for its allocations; no client should.
        side = self.pipe.engine_set.manifest.profile.size[0] if self.pipe.engine_set else 64
        self.pipe("warm up", num_inference_steps=1, width=side, height=side, mode="plain")
        replica = str(os.getpid())
        self.batcher = Batcher(self.pipe, policy, max_batch_rows, queue_limit, Observer(
            unet_call=lambda rows, requests, seconds: self.state.unet_call.remote(rows, requests, seconds),
            load=lambda queued, running, rows: self.state.replica_load.remote(replica, queued, queued + running,
                                                                               rows)))

    async def health(self) -> dict:
        return {"pid": os.getpid(), "backend": self.pipe.backend}

    async def generate(self, arguments: dict) -> dict:
        """``{"status": 200, "png": ..., "metadata": ...}``, or a status with a one-line error (and the
        field it is about, see ``error_body``)."""
        from .batcher import Draining, QueueFull

        try:
            future = await asyncio.to_thread(self.batcher.submit, **arguments)
        except QueueFull as error:
            return {"status": 429, "error": str(error)}
        except Draining as error:
            return {"status": 503, "error": str(error)}
        except InputError as error:
            return {"status": 400, **error_body(error)}
        except UserError as error:  # not the request's fault: this service lacks what it asks for
            return {"status": 503, "error": str(error)}
        try:
            output = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self.batcher.cancel(future)  # the client went away: its rows leave the next call
            raise
        except UserError as error:  # e.g. latents that stopped being finite
            return {"status": 422, **error_body(error)}
        except Exception as error:  # an engine failure: one line, not a traceback
            return {"status": 500, "error": f"generation failed: {type(error).__name__}: "
                                            f"{str(error).splitlines()[0] if str(error) else ''}"}
        return {"status": 200, "png": output.png(0), "metadata": output.metadata[0]}


app = FastAPI(title="sd-struct-rt", docs_url=None, redoc_url=None)
ROUTES = "POST /v1/generate, GET /healthz, GET /metrics"


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, error: StarletteHTTPException) -> Response:
    """FastAPI's own answers (an unknown route, a wrong method) in our one-line JSON."""
    return JSONResponse({"error": f"{error.detail}: {request.method} {request.url.path}; the routes are {ROUTES}"},
                        status_code=error.status_code, headers=getattr(error, "headers", None))


@app.exception_handler(RequestValidationError)
async def validation_error(request: Request, error: RequestValidationError) -> Response:
    return JSONResponse({"error": f"{request.method} {request.url.path} does not fit the route; the routes are "
                                  f"{ROUTES}"}, status_code=422)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(app)
class Router:
    def __init__(self, generator, state_name: str):
        self.generator = generator
        self.state = service_state(state_name)

    @app.post("/v1/generate")
    async def generate(self, request: Request) -> Response:
        started = time.perf_counter()

        def answer(status: int, body=None, **headers) -> Response:
            self.state.request_done.remote(status, time.perf_counter() - started)
            if isinstance(body, Response):
                return body
            return JSONResponse(body, status_code=status, headers=headers or None)

        if await self.state.draining.remote():
            return answer(503, {"error": "the service is shutting down; retry on another instance"})
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return answer(413, {"error": f"the body is {int(length)} bytes; a request takes at most "
                                         f"{MAX_BODY_BYTES}"})
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return answer(413, {"error": f"the body is {len(raw)} bytes; a request takes at most {MAX_BODY_BYTES}"})
        try:
            arguments = pipeline_arguments(json.loads(raw.decode("utf-8")))
        except (ValueError, UnicodeDecodeError, RecursionError) as error:  # too deep a body is bad JSON too
            if not isinstance(error, InputError):
                return answer(400, {"error": "the body is not valid JSON"})
            body = error_body(error)
            return answer(400, {**body, "error": body["error"].splitlines()[0]})
        response = self.generator.generate.remote(arguments)
        try:
            result = await response
        except asyncio.CancelledError:
            response.cancel()
            self.state.request_done.remote(499, time.perf_counter() - started)  # client closed the request
            raise
        except Exception as error:  # the replica died or could not be reached
            return answer(503, {"error": f"the replica serving this request stopped ({type(error).__name__}); "
                                         "retry, a new replica takes over"})
        if result["status"] != 200:
            headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if result["status"] in (429, 503) else {}
            return answer(result["status"], {key: result[key] for key in ("error", "field") if key in result},
                          **headers)
        if "application/json" in request.headers.get("accept", ""):
            return answer(200, {"image_png_base64": base64.b64encode(result["png"]).decode(),
                                "metadata": result["metadata"]})
        return answer(200, Response(result["png"], media_type="image/png"))

    @app.get("/healthz")
    async def healthz(self) -> Response:
        if await self.state.draining.remote():
            return JSONResponse({"status": "draining"}, status_code=503)
        try:
            health = await asyncio.wait_for(self.generator.health.remote(), timeout=2)
        except Exception:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok", **health})

    @app.get("/metrics")
    async def metrics(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(await self.state.render.remote(), media_type=CONTENT_TYPE_LATEST)


def build_app(args: dict):
    """The application from plain arguments: ``engine`` (a set's folder) or ``model`` (the torch
    reference, default tiny), ``policy``, ``max_batch_rows``, ``queue_limit``, ``state_name`` (one
    per service), and the generator's ``num_replicas`` or ``autoscaling_config`` (a Serve config
    file may set those in its deployments section instead)."""
    source = {"engine": args["engine"]} if args.get("engine") else {"model": args.get("model", "tiny")}
    state_name = args.get("state_name", STATE_NAME)
    scaling = {key: args[key] for key in ("num_replicas", "autoscaling_config") if args.get(key) is not None}
    policy = policy_named(args.get("policy", DEFAULT_POLICY)).name  # a bad name fails here, not in each replica
    generator = Generator.options(**scaling).bind(source, policy, args.get("max_batch_rows"),
                                                  int(args.get("queue_limit", 32)), state_name)
    return Router.bind(generator, state_name)
