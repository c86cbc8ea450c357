"""The OpenAPI schema tells the truth about errors: every API operation documents the shared error
answers (``{"error", "detail"}``), the 422 included, which FastAPI would describe as its own
validation-error array although this service answers every error in one shape."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "A stable code, e.g. invalid_study, not_found, too_large"},
        "detail": {"type": "string", "description": "What was wrong, in words; never file contents or paths"},
    },
}
ERRORS: dict[str, str] = {
    "400": "The study or request cannot be read or used",
    "401": "No valid credentials",
    "403": "The caller's role, grade or specialty does not allow it",
    "404": "No such resource",
    "409": "The resource's state does not allow it now",
    "413": "Over a size limit (upload, decoded image, record length)",
    "415": "A body of a media type the route does not take",
    "422": "Valid in form but not screenable or not assessable, or a field out of range",
    "429": "Too many failed sign-ins",
    "503": "Starting, or every screening slot busy (see Retry-After)",
}


def truthful_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's schema with the shared error answers on every operation (cached on the app)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, description in ERRORS.items():
                responses[status] = {"description": description, "content": error}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    app.openapi_schema = schema
    return schema


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`truthful_openapi` as the app's ``/openapi.json``."""
    app.openapi = lambda: truthful_openapi(app)  # type: ignore[method-assign]
