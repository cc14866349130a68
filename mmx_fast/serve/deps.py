"""FastAPI dependencies shared by the routers: the serving state and bearer-token auth. The app keeps its
``StateHolder`` and settings on ``app.state`` (``create_app``)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from .limits import ApiError
from .state import ServeState, StateHolder


def holder(request: Request) -> StateHolder:
    return request.app.state.holder


def state(request: Request) -> ServeState:
    st = request.app.state.holder.state
    if st is None:
        raise ApiError(503, "not_ready", "the model is still loading", headers={"Retry-After": "5"})
    return st


def authorize(request: Request) -> None:
    """Bearer auth when the server has keys (``--api-key-file``); constant-time comparison."""
    keys: list[bytes] = request.app.state.api_keys
    if not keys:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    ok = scheme.lower() == "bearer" and any(hmac.compare_digest(token.strip().encode(), k) for k in keys)
    if not ok:
        raise ApiError(
            401,
            "unauthorized",
            "missing or wrong bearer token; send 'Authorization: Bearer <key>'",
            "authorization",
            {"WWW-Authenticate": "Bearer"},
        )


# parameter types for the routes (FastAPI's Annotated dependencies)
State = Annotated[ServeState, Depends(state)]
Holder = Annotated[StateHolder, Depends(holder)]
