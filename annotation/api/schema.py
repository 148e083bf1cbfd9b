"""OpenAPI post-processing: every operation documents the errors it can answer with, in the one error
shape of ``annotation.api.errors`` ({"status", "code", "message", "fields"}), so that client authors (and
schema-driven fuzzers) know what a refusal looks like."""
from __future__ import annotations

ERRORS = {
    "400": "Invalid input: `fields` holds a message per field (`non_field_errors` for the rest).",
    "401": "Not authenticated (no or an invalid token or session).",
    "403": "Authenticated, but the role is too low for this action.",
    "404": "No such object, or one in a project you cannot see.",
    "405": "Method not allowed.",
    "409": "Conflicts with the current state (already done differently, frozen, a closed round…).",
    "429": "Too many requests: a throttle or a login lockout; retry later.",
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["status", "code", "message", "fields"],
    "properties": {
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "fields": {"type": "object", "description": "field → messages (a list), or nested the same way for "
                   "items of a list or keys of an object"},
    },
}
PUBLIC = {"/api/schema/"}


def document_errors(result, generator, request, public):
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, item in result.get("paths", {}).items():
        if path in PUBLIC:
            continue
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for code, description in ERRORS.items():
                operation["responses"].setdefault(code, {
                    "description": description,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                })
    return result
