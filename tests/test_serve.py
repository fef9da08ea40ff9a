"""``sdrt serve`` as a subprocess on a free port, over real HTTP: batching, refusals, faults, draining."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from sd_struct_rt import StructuredDiffusionPipeline

from tests.conftest import psnr
from tests.hardening import SDRT

httpx = pytest.importorskip("httpx")
pytest.importorskip("ray.serve")
PROMPTS = ["a red car and a white sheep", "cats", "a big dog on a small mat with a blue ball", "a cat on a mat",
           "a green bench and a red car", "a yellow bird", "a blue cup on a wooden table", "two dogs"]
SMALL = {"steps": 6, "width": 64, "height": 64}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_processes() -> set[int]:
    found = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True, check=False)
    return {int(pid) for pid in found.stdout.split()}


class Server:
    def __init__(self, engines, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([SDRT, "serve", "--engine", str(engines), "--port", str(self.port), *extra],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 240
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"sdrt serve did not become healthy: {self.process.stderr.read()}")
            time.sleep(1)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def post(self, body, timeout: float = 120, **headers) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return httpx.post(f"{self.url}/v1/generate", content=content, headers=headers, timeout=timeout)

    def metrics(self) -> dict[str, float]:
        values = {}
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture(scope="module")
def server(tiny_engines):
    before = ray_processes()
    running = Server(tiny_engines, "--queue-limit", "8")
    yield running
    assert running.stop() == 0
    assert not (ray_processes() - before), "sdrt serve left Ray processes behind"


@pytest.fixture(scope="module")
def engine_pipe(tiny_engines):
    return StructuredDiffusionPipeline.from_engines(tiny_engines)


def test_concurrent_requests_with_different_phrase_counts_share_unet_calls(server, engine_pipe):
    from PIL import Image
    import io

    before = server.metrics()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda item: server.post({"prompt": item[1], "seed": 100 + item[0], **SMALL}),
                                  enumerate(PROMPTS)))
    assert [response.status_code for response in responses] == [200] * 8, [r.text[:200] for r in responses]
    after = server.metrics()
    calls = after["sdrt_unet_batch_rows_count"] - before.get("sdrt_unet_batch_rows_count", 0)
    calls_of_one = after['sdrt_unet_batch_requests_bucket{le="1.0"}'] - \
        before.get('sdrt_unet_batch_requests_bucket{le="1.0"}', 0)
    assert calls > calls_of_one  # at least one UNet call held rows of more than one request
    for index, (prompt, response) in enumerate(zip(PROMPTS, responses)):
        assert response.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(response.content)) as served:
            expected = engine_pipe(prompt, seed=100 + index, num_inference_steps=6, width=64, height=64)
            assert dict(served.text) == expected.metadata[0]  # the same PNG metadata as the CLI's
            assert psnr(served.convert("RGB"), expected.images[0]) >= 60


def test_a_composable_request_is_served_as_the_pipeline_draws_it(server, engine_pipe):
    from PIL import Image
    import io

    # Two phrases: 1 + 3 rows beside a plain request's 2, more than the set's 4-row calls hold.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        composed, plain = pool.map(server.post, [{"prompt": "a red car and a white sheep", "mode": "composable",
                                                  "seed": 9, **SMALL},
                                                 {"prompt": "a red car", "mode": "plain", "seed": 9, **SMALL}])
    assert composed.status_code == 200 and plain.status_code == 200, composed.text[:200]
    expected = engine_pipe("a red car and a white sheep", mode="composable", seed=9, num_inference_steps=6,
                           width=64, height=64)
    with Image.open(io.BytesIO(composed.content)) as served:
        assert served.text["mode"] == "composable" and dict(served.text) == expected.metadata[0]
        assert psnr(served.convert("RGB"), expected.images[0]) >= 60


def test_json_responses_carry_the_image_and_its_metadata(server):
    import base64

    response = server.post({"prompt": "a cat on a mat", **SMALL}, accept="application/json")
    body = response.json()
    assert response.status_code == 200 and body["metadata"]["prompt"] == "a cat on a mat"
    assert base64.b64decode(body["image_png_base64"]).startswith(b"\x89PNG")


def test_the_parser_field_picks_the_parser(server):
    response = server.post({"prompt": "a surfboard, a dog", "parser": "scene-graph", **SMALL},
                           accept="application/json")
    metadata = response.json()["metadata"]
    assert response.status_code == 200 and metadata["parser"] == "scene-graph"
    assert json.loads(metadata["phrases"]) == [{"text": "a surfboard", "span": [0, 3]},
                                               {"text": "a dog", "span": [4, 6]}]


def test_a_parser_the_service_lacks_is_a_503_not_the_clients_fault(server):
    from pathlib import Path

    models = Path(os.environ.get("STANZA_RESOURCES_DIR", Path.home() / "stanza_resources"))
    if (models / "en").is_dir():
        pytest.skip("Stanza's English models are installed here")
    response = server.post({"prompt": "a red car", "parser": "stanza", **SMALL})
    assert response.status_code == 503 and "Stanza's English models are not installed" in response.json()["error"]
    assert server.healthy()


def test_the_binding_field_binds_as_the_pipeline_does(server, engine_pipe):
    response = server.post({"prompt": "a red car and a white sheep", "binding": "magnet", "seed": 4, **SMALL},
                           accept="application/json")
    assert response.status_code == 200 and response.json()["metadata"]["binding"] == "magnet"
    expected = engine_pipe("a red car and a white sheep", binding="magnet", seed=4, num_inference_steps=6,
                           width=64, height=64)
    assert response.json()["metadata"] == expected.metadata[0]


@pytest.mark.parametrize("body, status, expected", [
    ({"seed": 1}, 400, "field 'prompt' is required"),
    ({"prompt": 7}, 400, "field 'prompt' must be a string"),
    ({"prompt": "a cat", "steps": "ten"}, 400, "field 'steps' must be a whole number"),
    ({"prompt": "a cat", "width": 130}, 400, "width 130 is not a multiple of 8"),
    ({"prompt": "a cat", "steps": 0}, 400, "steps must be between 1 and 1000"),
    ({"prompt": "a cat", "guidance": -1}, 400, "guidance must be 0 or more"),
    ({"prompt": "a cat", "mode": "loud"}, 400, "mode must be one of values, keys, plain, composable"),
    ({"prompt": "a cat", "width": 512, "height": 64}, 400, "width 512 is outside the engine's 64..128"),
    ({"prompt": "a" * 10_000}, 400, "more than the 1000 taken"),
    ({"prompt": "a cat", "colour": "red"}, 400, "unknown field 'colour'"),
    ({"prompt": "a cat", "parser": "nltk"}, 400, "parser must be one of spacy, stanza, scene-graph, tree"),
    ({"prompt": "a cat", "binding": "syngen"}, 400, "binding must be one of magnet, tome"),
    ({"prompt": "a cat", "phrases": ["a dog"], **SMALL}, 400, "does not occur as whole words"),
    ("{not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "must be a JSON object"),
    ("x" * 10_000_000, 413, "a request takes at most"),
])
def test_bad_bodies_are_one_line_json_4xx_and_the_server_keeps_serving(server, body, status, expected):
    response = server.post(body)
    assert response.status_code == status
    error = response.json()["error"]
    assert expected in error and "\n" not in error and "Traceback" not in error
    assert server.healthy()


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/nowhere", 404), ("GET", "/v1/generate", 405), ("DELETE", "/healthz", 405),
])
def test_fastapis_own_answers_are_our_one_line_json(server, method, path, status):
    response = httpx.request(method, f"{server.url}{path}", timeout=10)
    assert response.status_code == status
    error = response.json()["error"]
    assert path in error and "POST /v1/generate" in error and "\n" not in error
    assert set(response.json()) == {"error"}


def test_a_deeply_nested_body_is_a_json_400_not_a_500(server):
    response = server.post("[" * 20_000 + "]" * 20_000)  # under the 64 KB limit, past any recursion limit
    assert response.status_code == 400
    assert response.json()["error"] == "the body is not valid JSON"
    assert server.healthy()


def test_a_full_queue_is_429_with_retry_after(server):
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda seed: server.post({"prompt": "a cat", "seed": seed, "steps": 30,
                                                            "width": 64, "height": 64}), range(16)))
    statuses = [response.status_code for response in responses]
    assert 429 in statuses and set(statuses) <= {200, 429}, [r.text[:300] for r in responses if r.status_code >= 500]
    refused = next(response for response in responses if response.status_code == 429)
    assert refused.headers["retry-after"] == "1" and "retry later" in refused.json()["error"]


def test_a_client_that_goes_away_frees_its_rows(server):
    with pytest.raises(httpx.TimeoutException):
        server.post({"prompt": "a cat", "steps": 900, "width": 64, "height": 64}, timeout=3)
    deadline = time.monotonic() + 60
    while server.metrics()["sdrt_active_rows"] > 0:
        assert time.monotonic() < deadline, "the abandoned request kept its rows"
        time.sleep(0.5)
    assert server.post({"prompt": "a cat", **SMALL}).status_code == 200


def settled_requests_total(server) -> dict[str, float]:
    """The request counters once they stop moving (replicas report them asynchronously)."""
    previous = None
    for _ in range(40):
        current = {key: value for key, value in server.metrics().items() if key.startswith("sdrt_requests_total")}
        if current == previous:
            return current
        previous = current
        time.sleep(0.5)
    return previous


def test_every_accepted_request_gets_exactly_one_response(server):
    before = settled_requests_total(server)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda body: server.post(body),
                                  [{"prompt": "a cat", **SMALL}, {"prompt": ""}, {"prompt": "a dog", **SMALL},
                                   {"prompt": "a cat", "guidance": 3e38, **SMALL}, {"prompt": "a bird", **SMALL},
                                   {"prompt": "a cat", "steps": 1000}]))
    after = settled_requests_total(server)
    answered = {key: after[key] - before.get(key, 0) for key in after}
    assert sum(answered.values()) == len(responses)
    assert sorted(response.status_code for response in responses) == [200, 200, 200, 400, 400, 422]


def test_a_replica_that_dies_fails_its_requests_in_json_and_is_replaced(server):
    old_pid = httpx.get(f"{server.url}/healthz", timeout=5).json()["pid"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(server.post, {"prompt": "a cat", "steps": 800, "width": 64, "height": 64})
        time.sleep(3)
        os.kill(old_pid, signal.SIGKILL)
        response = pending.result(timeout=120)
    assert response.status_code >= 500 and "replica" in response.json()["error"]
    deadline = time.monotonic() + 180
    while True:
        health = httpx.get(f"{server.url}/healthz", timeout=5)
        if health.status_code == 200 and health.json()["pid"] != old_pid:
            break
        assert time.monotonic() < deadline, "no new replica took over"
        time.sleep(1)
    assert server.post({"prompt": "a cat", **SMALL}).status_code == 200


def test_sigterm_finishes_running_requests_refuses_new_ones_and_exits_0(tiny_engines):
    before = ray_processes()
    running = Server(tiny_engines, "--drain-seconds", "120")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        # long enough to be running still when the late request comes
        in_flight = [pool.submit(running.post, {"prompt": "a cat", "seed": seed, "steps": 400, "width": 64,
                                                "height": 64}) for seed in range(3)]
        time.sleep(2)
        running.process.send_signal(signal.SIGTERM)
        time.sleep(1)
        late = running.post({"prompt": "a dog", **SMALL})
        assert late.status_code == 503 and "shutting down" in late.json()["error"]
        assert [future.result(timeout=120).status_code for future in in_flight] == [200, 200, 200]
    assert running.process.wait(timeout=120) == 0
    assert "sdrt: stopped" in running.process.stderr.read()
    assert not (ray_processes() - before), "sdrt serve left Ray processes behind"


def test_a_bad_engine_set_or_a_busy_port_is_one_line_before_ray_starts(tiny_engines, tmp_path, capsys):
    from tests.hardening import one_error_line, run_sdrt

    one_error_line(*run_sdrt(capsys, "serve", "--engine", str(tmp_path / "missing")), "does not exist")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        one_error_line(*run_sdrt(capsys, "serve", "--engine", str(tiny_engines), "--port", port),
                       f"cannot listen on 127.0.0.1:{port}")
    one_error_line(*run_sdrt(capsys, "serve", "--engine", str(tiny_engines), "--autoscale", "4:1"),
                   "--autoscale MIN:MAX needs 1 <= MIN <= MAX, not 4:1")
    one_error_line(*run_sdrt(capsys, "serve", "--engine", str(tiny_engines), "--max-batch-rows", "1"),
                   "--max-batch-rows must be at least 2")
    with socket.socket() as closed:  # a port nothing listens on: refused at once
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    one_error_line(*run_sdrt(capsys, "serve", "--engine", str(tiny_engines), "--ray-address", f"127.0.0.1:{port}"),
                   f"--ray-address 127.0.0.1:{port}: ", "is the Ray head running there")
    one_error_line(*run_sdrt(capsys, "serve", "--engine", str(tiny_engines), "--ray-address", "head"),
                   "--ray-address takes HOST:PORT")
