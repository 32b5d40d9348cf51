"""What every endpoint shares: errors in Stripe's shape, request-parameter checks and the
decoder for Stripe's form encoding. Nothing here knows about stored objects."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

JSON = dict[str, Any]


class StripeApiError(Exception):
    """An error answered in Stripe's JSON shape, so the library raises its matching exception."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        error: JSON = {"type": type_, "message": message}
        if code is not None:
            error["code"] = code
        if param is not None:
            error["param"] = param
        self.body: JSON = {"error": error}


def _missing(param: str) -> StripeApiError:
    return StripeApiError(400, f"Missing required param: {param}.", code="parameter_missing", param=param)


def _invalid(param: str, message: str) -> StripeApiError:
    return StripeApiError(400, message, code="parameter_invalid", param=param)


def _no_such(kind: str, obj_id: str, *, param: str = "id", status: int = 404) -> StripeApiError:
    return StripeApiError(status, f"No such {kind}: '{obj_id}'", code="resource_missing", param=param)


def _check_params(params: Mapping[str, Any], allowed: Iterable[str], prefix: str | None = None) -> None:
    allowed = set(allowed)
    for key in params:
        if key not in allowed:
            name = f"{prefix}[{key}]" if prefix else key
            raise StripeApiError(
                400,
                f"Received unknown parameter: {name} (the fake Stripe server does not support it)",
                code="parameter_unknown",
                param=name,
            )


def _int(value: Any, param: str, *, minimum: int | None = 0) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise StripeApiError(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=param) from None
    if minimum is not None and number < minimum:
        raise StripeApiError(
            400,
            f"This value must be greater than or equal to {minimum}.",
            code="parameter_invalid_integer",
            param=param,
        )
    return number


def _bool(value: Any, param: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise _invalid(param, f"Invalid boolean: {value}")


def _str(params: Mapping[str, Any], key: str, *, required: bool = False, prefix: str | None = None) -> str | None:
    name = f"{prefix}[{key}]" if prefix else key
    value = params.get(key)
    if value is None or value == "":
        if required:
            raise _missing(name)
        return None
    if not isinstance(value, str):
        raise _invalid(name, f"Invalid string: {name} must be a string")
    return value


def _dicts(value: Any, param: str) -> list[JSON]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _invalid(param, f"Invalid array: {param} must be an array of hashes")
    return value


def _merge_metadata(current: Mapping[str, str], update: Any, param: str = "metadata") -> dict[str, str]:
    """Stripe semantics: keys merge, an empty value deletes a key, `metadata=""` clears all."""
    if update is None:
        return dict(current)
    if update == "":
        return {}
    if not isinstance(update, dict):
        raise _invalid(param, f"Invalid hash: {param} must be a hash")
    merged = dict(current)
    for key, value in update.items():
        if not isinstance(value, str):
            raise _invalid(f"{param}[{key}]", "Metadata values must be strings.")
        if len(key) > 40 or len(value) > 500:
            raise _invalid(f"{param}[{key}]", "Metadata keys are limited to 40 and values to 500 characters.")
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > 50:
        raise _invalid(param, "You can have at most 50 metadata keys.")
    return merged


_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_SUBKEY = re.compile(r"\[([^\[\]]*)\]")
# Hashes whose keys are user data; digit keys there must stay keys, not become list indexes.
_FREEFORM_HASHES = frozenset({"metadata"})


def decode_form(body: str) -> JSON:
    """Decode Stripe's form encoding (``items[0][price]=x&metadata[k]=v&expand[]=y``) into dicts and lists."""
    root: JSON = {}
    for raw_key, value in parse_qsl(body, keep_blank_values=True):
        match = _KEY.fullmatch(raw_key)
        if match is None:
            raise StripeApiError(400, f"Invalid parameter name: {raw_key}", param=raw_key)
        parts = [match.group(1), *_SUBKEY.findall(match.group(2))]
        node = root
        for depth, part in enumerate(parts):
            if part == "":
                part = str(len(node))  # `key[]` appends
            if depth == len(parts) - 1:
                if isinstance(node.get(part), dict):
                    raise StripeApiError(400, f"Invalid parameter: {raw_key} mixes a value and a hash", param=raw_key)
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise StripeApiError(400, f"Invalid parameter: {raw_key} mixes a value and a hash", param=raw_key)
                node = child
    decoded = _listify(root, freeform=True)
    assert isinstance(decoded, dict)
    return decoded


def _listify(node: JSON, *, freeform: bool = False) -> Any:
    out = {
        key: _listify(value, freeform=key in _FREEFORM_HASHES) if isinstance(value, dict) else value
        for key, value in node.items()
    }
    if not freeform and out and all(key.isdigit() for key in out):
        return [out[key] for key in sorted(out, key=int)]
    return out
