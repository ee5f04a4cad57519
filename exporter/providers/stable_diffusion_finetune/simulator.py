"""Stable Diffusion API (ModelsLab) fine-tunes, as the simulator serves them.

    POST /api/v3/fine_tune_status/{id}     {"key": "..."}
    POST /api/v3/finetune_list             {"key": "..."}

The key travels in the JSON body. Errors come with HTTP 200 and `"status": "error"`, a bad key
and an unknown training ID too. A fine-tune's work is `units` steps: its answer is the stage in
`messege` (the API's spelling) and the log of the steps done so far in `data`, one step line
each, joined by a literal " /n " (the variant `newline`: by newlines), in the documented wording
or (`worker_wording`) in the training worker's own. The list names each fine-tune and its stage.
The demo also calls the exporter's webhook for `sd-webhook`, as ModelsLab would.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from exporter.simulator.kit import (
    DEMO_WEBHOOK_TOKEN,
    Answer,
    Bench,
    Call,
    Demo,
    DemoCall,
    Keys,
    Listing,
    ListRoute,
    Moment,
    Route,
    SimJob,
    SimPart,
    json_answer,
)

if TYPE_CHECKING:
    from datetime import datetime

NAME = "stable_diffusion_finetune"
SOURCE = "stable-diffusion"
STAGES = (
    "deploying_gpu",
    "training_started",
    "training_success",
    "trained_model_compressing",
    "trained_model_uploading",
    "trained_model_uploaded",
    "deploying_model",
    "model_ready",
)


def render(
    job: SimJob, now: Moment, created: datetime, clock: datetime, variant: str
) -> dict[str, Any]:
    del created, clock  # the API gives no times
    steps = job.units
    done_steps = math.floor(now.done * steps)
    minutes_per_step = job.duration / steps / 60
    more, elapsed = ("More ", " | Time Elapsed : {} seconds") if job.worker_wording else ("", "")
    lines = [
        f"Step:{n} Stage {n} done, {steps - n} {more}Steps to go : ETA : "
        f"{max(1, math.ceil((steps - n) * minutes_per_step))} minutes"
        + elapsed.format(round(n * job.duration / steps))
        for n in range(1, done_steps + 1)
    ]
    if now.phase == "succeeded":
        stage = "model_ready"
        lines.append("Model loaded successfully")
    elif now.phase == "failed":
        stage = "training_failed"
    elif now.phase == "not_started":
        stage = "deploying_gpu"
    else:
        stage = STAGES[1 + min(math.floor(now.done * 6), 5)]
    separator = "\n" if variant == "newline" else " /n "
    return {"status": "success", "messege": stage, "data": separator.join(lines)}


def check_key(call: Call, keys: Keys) -> Answer | None:
    try:
        key = json.loads(call.body or b"{}").get("key")
    except (ValueError, AttributeError):
        key = None
    if key in keys.keys:
        return None
    # The Stable Diffusion API reports a bad key with HTTP 200.
    return json_answer({"status": "error", "message": "Invalid Api Key"})


def not_found() -> Answer:
    return json_answer({"status": "error", "messege": "No such training id"})


def fine_tunes(listing: Listing) -> Answer:
    listed = [{"model_id": job.job_id, "status": listing.rendered(job)["messege"]}
              for job in listing.jobs]  # fmt: skip
    return json_answer({"status": "success", "data": listed})


def demo_sources(demo: Demo) -> list[dict[str, Any]]:
    return [{"name": SOURCE, "provider": NAME, "endpoint": demo.url,
             "auth": {"api_key": demo.key}, "job_ids": ["sd-ok", "sd-stalled"],
             "webhook_token": DEMO_WEBHOOK_TOKEN}]  # fmt: skip


def bench_source(url: str, key: str) -> dict[str, Any]:
    return {"name": SOURCE, "provider": NAME, "endpoint": url, "auth": {"api_key": key}}


def failed_poll(message: str) -> dict[str, Any]:
    return {"status": "error", "message": message}


def training(text: str) -> dict[str, Any]:
    """A fine-tune at step 1 of 6, whose stage holds `text`."""
    return {"status": "success", "messege": f"training_started {text}",
            "data": "Step:1 Stage 1 done, 5 Steps to go : ETA : 10 minutes"}  # fmt: skip


CALLED_BACK = SimJob("sd-webhook", NAME, duration=180, units=6)
# What ModelsLab posts when a training moves (its documented webhook payload).
WEBHOOK = DemoCall(
    f"/api/v1/webhooks/stable-diffusion/{SOURCE}",
    {"status": "success", "training_status": "deploying_gpu",
     "logs": "it will take upto 25 minutes", "model_id": CALLED_BACK.job_id},
    {"X-Webhook-Token": DEMO_WEBHOOK_TOKEN},
)  # fmt: skip

PART = SimPart(
    NAME,
    routes=(Route("POST", re.compile(r"/api/v3/fine_tune_status/(?P<job_id>[^/]+)")),),
    render=render,
    check_key=check_key,
    listings=(ListRoute("POST", re.compile(r"/api/v3/finetune_list"), fine_tunes),),
    not_found=not_found,
    demo_jobs=(
        SimJob("sd-ok", NAME, duration=200, units=6, worker_wording=True),
        SimJob("sd-stalled", NAME, duration=200, units=6, outcome="stalled", stop_at=0.35),
    ),
    demo_sources=demo_sources,
    demo_calls=(WEBHOOK,),
    called_jobs=(CALLED_BACK,),
    bench=Bench(bench_source, failed_poll=failed_poll, status=training),
)
