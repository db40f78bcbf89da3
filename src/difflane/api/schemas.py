"""Request and response shapes of the HTTP API (they are the OpenAPI document)."""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from difflane.jobs import MAX_SEED, ErrorCode, JobState

# Bounds that hold for every model; each model's own (tighter) limits are checked on submit.
MAX_PROMPT_CHARS = 10_000
MAX_SIDE = 8192

# Line breaks and tabs are ordinary prompt text; every other control character (C0, DEL, C1) and
# any lone surrogate (not encodable as UTF-8) would break a later stage: a PNG text chunk (NUL
# is its separator), a log line, a terminal. Refused at the door so no worker ever sees them.
_ALLOWED_CONTROLS = frozenset("\t\n\r")
INVALID_CHARACTERS = "invalid_characters"  # the error code (see problems._validation_error)


def _plain_text(value: str | None) -> str | None:
    for index, char in enumerate(value or ""):
        if char in _ALLOWED_CONTROLS:
            continue
        if unicodedata.category(char) in ("Cc", "Cs"):
            raise PydanticCustomError(
                INVALID_CHARACTERS,
                "contains the control character U+{codepoint:04X} at position {index}",
                {"codepoint": ord(char), "index": index},
            )
    return value


PlainText = AfterValidator(_plain_text)


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: Annotated[
        str,
        Field(
            min_length=1,
            max_length=2048,
            description="https URL on a host this deployment allows; signed per Standard Webhooks",
        ),
        PlainText,
    ]
    events: Annotated[
        list[Literal["started", "progress", "completed"]],
        Field(min_length=1, max_length=3, description="Which events to send (default: completed)"),
    ] = ["completed"]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # "64" is not a number: say so

    model: Annotated[
        str, Field(min_length=1, max_length=200, description="A model name from GET /v1/models"), PlainText
    ]
    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS), PlainText]
    negative_prompt: Annotated[str | None, Field(max_length=MAX_PROMPT_CHARS), PlainText] = None
    width: Annotated[int | None, Field(ge=8, le=MAX_SIDE, multiple_of=8)] = None
    height: Annotated[int | None, Field(ge=8, le=MAX_SIDE, multiple_of=8)] = None
    steps: Annotated[int | None, Field(ge=1, le=1000)] = None
    guidance_scale: Annotated[float | None, Field(ge=0.0, le=100.0, allow_inf_nan=False)] = None
    seed: Annotated[int | None, Field(ge=0, le=MAX_SEED, description="Random when absent; always recorded")] = None
    num_images: Annotated[int, Field(ge=1, le=64)] = 1
    lane: Annotated[str | None, Field(min_length=1, max_length=100), PlainText] = None
    webhook: WebhookCreate | None = None


class ProgressOut(BaseModel):
    step: int
    total: int


class ErrorOut(BaseModel):
    code: ErrorCode
    message: str


class OutputOut(BaseModel):
    index: int
    url: str
    bytes: int
    sha256: str
    seed: int
    width: int
    height: int


# The response models below describe what difflane.views builds: every key is always present
# (null where unknown), so every field is required. tests/unit/test_job_view.py holds them together.


class RunMetricsOut(BaseModel):
    queue_wait_s: float | None = Field(description="From acceptance to the start of the final attempt")
    load_s: float | None = Field(description="Model load time of the final attempt (0 when cached)")
    execution_s: float | None = Field(description="Pipeline time of the final attempt")
    batch_size: int | None = Field(description="Images in the pipeline call that rendered this job")
    device: str | None
    peak_memory_bytes: int | None = Field(description="Peak device memory (CUDA only)")
    gpu_utilization: float | None = Field(description="NVML utilisation 0..1 (GPU only)")


class WebhookOut(BaseModel):
    url: str
    events: list[str]


class JobLinks(BaseModel):
    self: str
    events: str
    cancel: str


class QueueOut(BaseModel):
    position: int = Field(description="1 = the next job of its lane to start")
    eta_start_s: float = Field(description="Predicted seconds until it starts (cost model + live lane state)")
    eta_finish_s: float = Field(description="Predicted seconds until it finishes")


class JobOut(BaseModel):
    id: str
    state: JobState
    model: str
    lane: str
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    num_images: int
    progress: ProgressOut
    created_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    cancel_requested: bool
    error: ErrorOut | None
    outputs: list[OutputOut]
    metrics: RunMetricsOut | None
    webhook: WebhookOut | None
    links: JobLinks
    queue: QueueOut | None = Field(description="While queued: position and predicted times; else null")
    eta_finish_s: float | None = Field(description="While queued or running: predicted seconds to finish")


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page")


class ModelLimitsOut(BaseModel):
    max_width: int
    max_height: int
    max_pixels: int
    min_steps: int
    max_steps: int
    max_images: int
    max_prompt_chars: int
    max_guidance_scale: float


class ModelDefaultsOut(BaseModel):
    width: int
    height: int
    steps: int
    guidance_scale: float
    negative_prompt: str


class ModelOut(BaseModel):
    name: str
    lane: str
    source: str
    revision: str | None
    pipeline: str
    description: str
    defaults: ModelDefaultsOut
    limits: ModelLimitsOut


class ModelList(BaseModel):
    models: list[ModelOut]


class ProblemDetail(BaseModel):
    code: str = Field(description="Machine-readable error code")
    message: str
    field: str | None = None


class Problem(BaseModel):
    error: ProblemDetail


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}
