"""Bearer-token auth of every route and transport, and the client name caps are counted under."""

import hmac
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from posefleet.serve.capacity import client_key

bearer = HTTPBearer(auto_error=False, description="required when the server has a token configured")


def token_ok(app_: FastAPI, given: str | None) -> bool:
    """The token check of every route and transport; the tokens are set per replica (none: auth off)."""
    tokens: list[str] = getattr(app_.state, "auth_tokens", [])
    given_b = (given or "").encode()
    # every token compared, in constant time each: no early exit tells which one nearly matched
    return not tokens or sum(hmac.compare_digest(given_b, t.encode()) for t in tokens) > 0


def client_of(app_: FastAPI, given: str | None, address: str | None) -> str:
    """The name a client's caps are counted under: its token (when auth is on), else its address."""
    return client_key(given if app_.state.auth_tokens else None, address)


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> str:
    """Check the bearer token; returns the client's name (its token's digest, or its address with auth off).
    ``async`` though it never waits: FastAPI runs a plain ``def`` dependency on a thread, a hop per request."""
    given = credentials.credentials if credentials is not None else None
    if not token_ok(request.app, given):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
    return client_of(request.app, given, request.client and request.client.host)


Client = Annotated[str, Depends(require_token)]


AUTH = [Depends(require_token)]
