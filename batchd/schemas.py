"""The JSON schemas batchd accepts for replies, and the validator that checks a reply against one.

A schema must be self-contained: ``$ref`` and ``$dynamicRef`` point inside it (``#...``), it has no
``$id`` of its own, and references resolve through a ``referencing.Registry`` with no retrieval, so
checking a reply never reads a file or fetches a URL. Every ``pattern`` and ``patternProperties`` key
must compile as RE2, and replies are matched with RE2 (linear time: no catastrophic backtracking on
the event loop); ``unevaluatedProperties`` beside ``patternProperties`` is refused (that keyword
matches through Python's ``re``). ``schema_problem`` says what is wrong when a pipeline loads;
``reply_validator`` builds the checker for replies.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import jsonschema
import re2  # type: ignore[import-untyped]
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

#: what checking a reply against a schema can raise beyond a verdict (an old journal row's schema)
CHECK_ERRORS: tuple[type[Exception], ...] = (Unresolvable, RecursionError, re2.error)
#: the keywords whose object's keys are names (properties, definitions), not keywords
_NAMED = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
#: the keywords whose values are data, not schemas
_DATA = frozenset({"enum", "const", "examples", "default"})


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # a refused pattern is our error record, not a line on stderr
    return options


_OPTIONS = _options()


@lru_cache(maxsize=512)
def _compile(pattern: str) -> Any:
    return re2.compile(pattern, options=_OPTIONS)


def _search(pattern: str, text: str) -> bool:
    return _compile(pattern).search(text) is not None


def _pattern(validator: Any, patrn: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(patrn, instance):
        yield ValidationError(f"{instance[:80]!r} does not match {patrn[:80]!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for patrn, subschema in patterns.items():
        for key, value in instance.items():
            if _search(patrn, key):
                yield from validator.descend(value, subschema, path=key, schema_path=patrn)


def _additional_properties(validator: Any, ap: Any, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [k for k in instance if k not in properties and not any(_search(p, k) for p in patterns)]
    if validator.is_type(ap, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], ap, path=extra)
    elif not ap and extras:
        shown = ", ".join(repr(e[:80]) for e in sorted(extras)[:10])
        yield ValidationError(f"Additional properties are not allowed ({shown} unexpected)")


_Validator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    {"pattern": _pattern, "patternProperties": _pattern_properties, "additionalProperties": _additional_properties},
)


def reply_validator(schema: dict[str, Any]) -> Any:
    """The validator for replies: RE2 patterns, references only inside ``schema`` (never retrieved)."""
    resource: Resource[Any] = DRAFT202012.create_resource(schema)
    registry: Registry[Any] = Registry().with_resource("", resource)
    return _Validator(schema, registry=registry)


def _walk(node: Any, path: str, *, named: bool = False) -> Iterator[tuple[str, str, Any]]:
    """(where, keyword, value) for every keyword of every subschema in ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}/{key}"
            if named:  # the keys are property or definition names; each value is a schema
                yield from _walk(value, here)
                continue
            yield here, str(key), value
            if key not in _DATA:
                yield from _walk(value, here, named=key in _NAMED)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why batchd will not check replies against ``schema`` (it reaches outside itself, or holds a
    pattern RE2 cannot run), or None. Names the place, never a referenced file's content."""
    resolver = Registry().with_resource("", DRAFT202012.create_resource(schema)).resolver()
    uses_unevaluated = uses_patterns = False
    for where, key, value in _walk(schema, ""):
        where = where or "/"
        if key in ("$ref", "$dynamicRef"):
            if not isinstance(value, str) or not value.startswith("#"):
                return f"{where}: only references inside the schema (starting with '#') are allowed"
            try:
                resolver.lookup(value)
            except Unresolvable:
                return f"{where}: {value[:80]!r} points at nothing in the schema"
        elif key == "$id":
            return f"{where}: $id is not allowed (a schema here is self-contained)"
        elif key == "pattern" and isinstance(value, str):
            if (problem := _re2_problem(value)) is not None:
                return f"{where}: {problem}"
        elif key == "patternProperties" and isinstance(value, dict):
            uses_patterns = True
            for patrn in value:
                if (problem := _re2_problem(str(patrn))) is not None:
                    return f"{where}: {problem}"
        elif key == "unevaluatedProperties":
            uses_unevaluated = True
    if uses_unevaluated and uses_patterns:
        return "unevaluatedProperties beside patternProperties is not supported"
    return None


def _re2_problem(pattern: str) -> str | None:
    try:
        _compile(pattern)
    except re2.error:
        return (
            f"pattern {pattern[:80]!r} cannot be checked in linear time (RE2 syntax: no backreferences or lookaround)"
        )
    return None
