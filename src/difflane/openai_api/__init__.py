"""The OpenAI Images API under ``/openai/v1``, so ``OpenAI(base_url=".../openai/v1")`` works unchanged.

A thin translation onto the same ``JobService`` as ``/v1``: one job per request (``n`` images),
waited for up to ``DIFFLANE_OPENAI_WAIT_SECONDS``; same authentication, ownership, limits and
catalog bounds. Only the shapes differ: OpenAI's request, response and error bodies.
"""

from difflane.openai_api.routes import router

__all__ = ["router"]
