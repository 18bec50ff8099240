"""HTTP helpers of the human form: security headers, origin parsing, strict JSON bodies, the login form's fields.

Every request body is parsed with ``tasks.io.loads_json`` (a repeated key is a 422 naming it, never "the last one
wins"), a query parameter or form field given twice is refused, and every response carries the security headers
below (``SecurityHeaders``). The app (``app.py``) and the trajectory mode (``trajectory_api.py``) share these.
"""

from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, ValidationError

from tasks.io import DuplicateKeyError, loads_json

HEADERS = [(b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; form-action 'self'; "
            b"base-uri 'none'"), (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
           (b"x-frame-options", b"DENY")]
DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]  # scheme, host, port


def web_origin(url: str) -> Origin | None:
    """(scheme, host, port) of an http(s) URL or Origin header, normalized: lower case, IDNA host, default port
    explicit; None when it is not one (``null``, another scheme, no host, a bad port)."""
    try:
        parts = urlsplit(url.strip())
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
        if scheme not in DEFAULT_PORTS or not host:
            return None
        host = host.rstrip(".").encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        return None
    return scheme, host, port or DEFAULT_PORTS[scheme]


def show_origin(o: Origin) -> str:
    scheme, host, port = o
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port == DEFAULT_PORTS[scheme] else f":{port}")



class EmptyIn(BaseModel):
    """A POST without parameters (logout): an empty body or ``{}``."""

    model_config = ConfigDict(extra="forbid")


def json_body(model: type[BaseModel], *, optional: bool = False) -> Any:
    """A dependency parsing the request body strictly with ``tasks.io.loads_json`` (a repeated key is refused with
    a 422 naming it, where FastAPI's own parsing keeps the last value) and validating it as ``model``."""

    async def parse(request: Request) -> BaseModel:
        raw = await request.body()  # FastAPI's max_body_size applies here too (413 past the limit)
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if not (ctype == "application/json" or ctype.endswith("+json")):
            raise HTTPException(415, f"send the body as application/json, not {ctype!r}")
        if optional and not raw.strip():
            raw = b"{}"
        try:
            obj = loads_json(raw)
        except DuplicateKeyError as e:
            raise HTTPException(422, f"body: {e}") from e
        except UnicodeDecodeError as e:
            raise HTTPException(422, f"body: not UTF-8 ({e.reason} at byte {e.start})") from e
        except ValueError as e:  # json.JSONDecodeError
            raise HTTPException(422, f"body: malformed JSON ({e})") from e
        try:
            return model.model_validate(obj)
        except ValidationError as e:
            raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from e

    return Depends(parse)


def no_repeated_query(request: Request) -> None:
    """Refuse a query parameter given twice (``?split=practice&split=sealed``) instead of keeping the last one."""
    twice = [k for k, n in Counter(k for k, _ in request.query_params.multi_items()).items() if n > 1]
    if twice:
        raise HTTPException(422, f"query parameter {twice[0]!r} is given more than once: give it once")


JOIN_FIELDS = {"token", "form_token"}


async def join_form(request: Request) -> dict[str, str]:
    """The login form's fields, each exactly once (a repeated field is refused, not "the last one wins")."""
    form = await request.form(max_files=0, max_fields=len(JOIN_FIELDS) + 1)
    items = form.multi_items()
    counts = Counter(k for k, _ in items)
    bad = ([f"field {k!r} is given more than once" for k, n in counts.items() if n > 1]
           + [f"unknown field {k!r}" for k in counts if k not in JOIN_FIELDS]
           + [f"field {k!r} is missing" for k in sorted(JOIN_FIELDS - set(counts))]
           + [f"field {k!r} is not text or is over 200 characters" for k, v in items
              if not isinstance(v, str) or len(v) > 200])
    if bad:
        raise HTTPException(422, "login form: " + "; ".join(bad))
    return {k: str(v) for k, v in items}


class SecurityHeaders:
    """ASGI middleware adding the security headers above to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def headed(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                msg["headers"] = list(msg.get("headers", [])) + HEADERS
            await send(msg)

        await self.app(scope, receive, headed if scope["type"] == "http" else send)
