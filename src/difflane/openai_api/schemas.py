"""OpenAI's Images API shapes, as far as difflane serves them."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from difflane.api.schemas import MAX_PROMPT_CHARS

SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")


class ImageGenerationRequest(BaseModel):
    """``POST /images/generations``. difflane's own parameters ride as extra body fields
    (``extra_body=`` in the ``openai`` client); their bounds are those of ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    prompt: Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
    model: Annotated[
        str | None, Field(min_length=1, max_length=200, description="Default: the first catalog model")
    ] = None
    n: Annotated[int | None, Field(ge=1, le=64, description="Number of images (one job)")] = None
    size: Annotated[
        str | None, Field(max_length=11, description="WIDTHxHEIGHT, e.g. 512x512; default: the model's")
    ] = None
    response_format: Literal["url", "b64_json"] | None = None
    user: Annotated[str | None, Field(max_length=256, description="Logged with the job id; not stored")] = None
    # Accepted so that clients which always send them work; difflane has no such knobs.
    quality: Literal["standard", "hd", "auto", "low", "medium", "high"] | None = None
    style: Literal["vivid", "natural"] | None = None
    output_format: Literal["png"] | None = None
    # difflane's parameters (validated by the /v1 job schema, so the bounds are the same)
    seed: Any = None
    steps: Any = None
    negative_prompt: Any = None
    guidance_scale: Any = None


class ImageOut(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageOut]
    output_format: str = "png"
    size: str


class OpenAIModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModelOut]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorOut(BaseModel):
    error: ErrorDetail
