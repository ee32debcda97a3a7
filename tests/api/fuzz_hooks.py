"""Schemathesis hooks for Engram: every 4xx and 5xx must be RFC 9457 problem+json."""
import json

import schemathesis

# `POST /v1/import` takes JSON Lines: send generated strings as text.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")


def _header(response, name):
    value = response.headers.get(name) or response.headers.get(name.lower()) or ""
    return value[0] if isinstance(value, list) else value


@schemathesis.check
def problem_json_errors(ctx, response, case):
    if response.status_code < 400:
        return None
    ctype = _header(response, "content-type")
    if not ctype.startswith("application/problem+json"):
        raise AssertionError(f"{response.status_code} with content-type {ctype!r}, not application/problem+json")
    body = json.loads(response.content)
    for field in ("type", "title", "status", "detail", "code"):
        if field not in body:
            raise AssertionError(f"problem body lacks `{field}`: {body}")
    if body["status"] != response.status_code:
        raise AssertionError(f"problem status {body['status']} != HTTP {response.status_code}")
    return None
