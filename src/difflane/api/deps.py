"""FastAPI dependencies shared by routes."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from difflane.api.context import get_context
from difflane.jobs import Principal


def current_principal(conn: HTTPConnection) -> Principal:
    return get_context(conn).authenticator.authenticate(conn)
