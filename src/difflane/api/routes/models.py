"""/v1/models: the catalog with each model's defaults, limits and lane."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from difflane.api.context import ApiContext, get_context
from difflane.api.deps import AnyPermission
from difflane.api.schemas import ModelList

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", response_model=ModelList, summary="List the models this deployment serves")
async def list_models(ctx: Annotated[ApiContext, Depends(get_context)], caller: AnyPermission) -> dict[str, object]:
    return {
        "models": [
            {
                "name": m.name,
                "lane": m.lane,
                "source": m.source,
                "revision": m.revision,
                "pipeline": m.pipeline,
                "description": m.description,
                "defaults": m.defaults.model_dump(),
                "limits": m.limits.model_dump(),
            }
            for m in ctx.catalog
        ]
    }
