"""In-flight batching without a server: requests at different steps and with different level
counts share UNet calls, and each gets the image it would get alone."""

from __future__ import annotations

import json
import threading
import time

import pytest

from sd_struct_rt import StructuredDiffusionPipeline
from sd_struct_rt.errors import InputError, UserError
from sd_struct_rt.serve.batcher import Batcher, Draining, Observer, QueueFull

from tests.conftest import psnr

FAST = {"num_inference_steps": 6, "width": 64, "height": 64}
PROMPTS = ["a red car and a white sheep", "cats", "a big dog on a small mat with a blue ball", "a cat on a mat"]


@pytest.fixture(scope="module")
def pipe(tiny_engines):
    return StructuredDiffusionPipeline.from_engines(tiny_engines)


class Recorder(Observer):
    def __init__(self):
        self.calls: list[tuple[int, int]] = []  # (rows, requests) of each UNet call
        super().__init__(unet_call=lambda rows, requests, seconds: self.calls.append((rows, requests)))


def run_all(batcher, arguments):
    futures = [batcher.submit(prompt, **extra) for prompt, extra in arguments]
    return [future.result(timeout=120) for future in futures]


def test_concurrent_requests_share_calls_and_get_their_own_images(pipe):
    recorder = Recorder()
    batcher = Batcher(pipe, observer=recorder)
    try:
        arguments = [(prompt, {**FAST, "seed": 10 + index, "num_inference_steps": 4 + index})
                     for index, prompt in enumerate(PROMPTS)]
        outputs = run_all(batcher, arguments)
    finally:
        batcher.close()
    assert max(requests for _, requests in recorder.calls) > 1  # rows of several requests in one call
    levels = {len(json.loads(output.metadata[0]["phrases"])) for output in outputs}
    assert len(levels) > 1  # and with different level counts
    for (prompt, extra), output in zip(arguments, outputs):
        alone = pipe(prompt, **extra)
        assert output.metadata == alone.metadata
        assert psnr(output.images[0], alone.images[0]) >= 60  # only float reassociation differs


def test_a_lone_request_is_bit_identical_to_the_pipeline(pipe):
    batcher = Batcher(pipe, policy="single")
    try:
        (output,) = run_all(batcher, [(PROMPTS[0], {**FAST, "seed": 3})])
    finally:
        batcher.close()
    assert output.png(0) == pipe(PROMPTS[0], seed=3, **FAST).png(0)


@pytest.mark.parametrize("policy", ["single", "static", "inflight"])
def test_policies(pipe, policy):
    recorder = Recorder()
    batcher = Batcher(pipe, policy=policy, max_batch_rows=4, observer=recorder)
    try:
        first = batcher.submit(PROMPTS[0], **{**FAST, "num_inference_steps": 12})
        while not recorder.calls:
            time.sleep(0.01)
        second = batcher.submit(PROMPTS[1], **FAST)  # arrives while the first is running
        first.result(timeout=120), second.result(timeout=120)
    finally:
        batcher.close()
    assert max(requests for _, requests in recorder.calls) == (1 if policy != "inflight" else 2)
    assert all(rows <= 4 for rows, _ in recorder.calls)
    if policy != "inflight":  # the newcomer waited for the whole first run: 13 PNDM calls, then its own 7
        assert [requests for _, requests in recorder.calls] == [1] * 20


def test_a_cancelled_request_frees_its_rows(pipe):
    rows_running = []
    batcher = Batcher(pipe, observer=Observer(load=lambda queued, running, rows: rows_running.append(rows)))
    try:
        future = batcher.submit(PROMPTS[0], **{**FAST, "num_inference_steps": 200})
        while not rows_running or rows_running[-1] == 0:
            time.sleep(0.01)
        batcher.cancel(future)
        deadline = time.monotonic() + 30
        while batcher.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.busy == 0 and rows_running[-1] == 0 and future.cancelled()
    finally:
        batcher.close()


def test_refusals_come_before_the_queue(pipe):
    batcher = Batcher(pipe, queue_limit=1, policy="single")
    gate = threading.Event()
    original = pipe.predict_noise
    pipe.predict_noise = lambda *args: (gate.wait(), original(*args))[1]  # hold the first call
    try:
        with pytest.raises(InputError, match="guidance_scale"):
            batcher.submit(PROMPTS[0], guidance_scale=-1, **FAST)
        running = batcher.submit(PROMPTS[0], **FAST)
        while not batcher.active:
            time.sleep(0.01)
        queued = batcher.submit(PROMPTS[1], **FAST)
        with pytest.raises(QueueFull):
            batcher.submit(PROMPTS[2], **FAST)
        batcher.drain()
        with pytest.raises(Draining):
            batcher.submit(PROMPTS[2], **FAST)
        gate.set()
        assert running.result(timeout=120).images and queued.result(timeout=120).images  # drained, not dropped
    finally:
        gate.set()
        del pipe.predict_noise
        batcher.close()


def test_a_request_whose_latents_blow_up_fails_alone(pipe):
    batcher = Batcher(pipe)
    try:
        bad = batcher.submit(PROMPTS[0], guidance_scale=3e38, **FAST)
        good = batcher.submit(PROMPTS[1], seed=5, **FAST)
        assert psnr(good.result(timeout=120).images[0], pipe(PROMPTS[1], seed=5, **FAST).images[0]) >= 60
        with pytest.raises(UserError, match="stopped being finite"):
            bad.result(timeout=120)
    finally:
        batcher.close()
