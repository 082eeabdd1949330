"""Hypothesis strategies for tool arguments, drawn from a tool's published input schema, and the
hostile variants an attacker sends.

``from_schema`` covers the JSON Schema our tools publish (types, ``anyOf``, ``enum``,
``pattern``, lengths, bounds, ``items``, ``properties``/``required``, ``date-time``). We write
it ourselves: hypothesis-jsonschema 0.23 does not run on the hypothesis we use.

Arguments are JSON text, not Python values, because several attacks cannot be written by
``json.dumps``: a 5,000-digit integer, ``NaN``, ``Infinity``, nesting 10,000 deep. ``Raw``
marks such a token; ``to_json`` writes the whole document.
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, seed
from hypothesis import settings as run_with
from hypothesis import strategies as st

Schema = dict[str, Any]


@dataclass(frozen=True)
class Raw:
    """A JSON text written as it is."""

    text: str


def to_json(value: Any) -> str:
    """JSON text for ``value``; ``Raw`` parts are written verbatim, strings ASCII-escaped (so a
    lone surrogate goes as ``\\ud800``)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{to_json(str(k))}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value)


def inline_refs(schema: Schema, defs: dict[str, Schema] | None = None) -> Schema:
    """``schema`` with every ``{"$ref": "#/$defs/X"}`` replaced by ``X`` (a pydantic model's
    schema has them; our tools' are inlined already)."""
    defs = schema.get("$defs", {}) if defs is None else defs

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            if isinstance(ref := value.get("$ref"), str) and ref.startswith("#/$defs/"):
                rest = {k: v for k, v in value.items() if k != "$ref"}
                return walk({**defs[ref.removeprefix("#/$defs/")], **rest})
            return {k: walk(v) for k, v in value.items() if k != "$defs"}
        return [walk(v) for v in value] if isinstance(value, list) else value

    inlined: Schema = walk(schema)
    return inlined


def _types(schema: Schema) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, list):
        return kind
    return [kind] if isinstance(kind, str) else []


def from_schema(schema: Schema) -> st.SearchStrategy[Any]:
    """Values valid for ``schema`` (as far as its keywords say)."""
    if "anyOf" in schema:
        return st.one_of([from_schema(option) for option in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kinds = _types(schema)
    if len(kinds) != 1:
        return st.one_of([from_schema({**schema, "type": kind}) for kind in kinds or ["string"]])
    kind = kinds[0]
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.integers(low, high if high is not None else 2**40)
    if kind == "number":
        low, high = schema.get("minimum"), schema.get("maximum")
        return st.floats(low, high, allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = from_schema(schema.get("items", {"type": "string"}))
        most = min(schema.get("maxItems", 5), 5)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=max(most, 1))
    if kind == "object":
        return _object(schema)
    raise ValueError(f"no strategy for schema {schema}")


def _string(schema: Schema) -> st.SearchStrategy[str]:
    if schema.get("format") == "date-time":
        return st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat)
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if "pattern" in schema:
        pattern: str = schema["pattern"]
        found = st.from_regex(pattern, fullmatch=True)
        return found.filter(lambda s: low <= len(s) <= (high or len(s)))
    # Text as people type it, and now and then any character at all.
    text = st.text(min_size=low, max_size=min(high or 40, 40))
    return text.filter(lambda s: len(s.strip()) >= min(low, 1))


def _object(schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
    properties: dict[str, Schema] = schema.get("properties", {})
    required = set(schema.get("required", []))
    optional = [name for name in properties if name not in required]
    if not properties and schema.get("additionalProperties", True) is not False:
        return st.dictionaries(st.text(max_size=10), st.integers() | st.text(max_size=10))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        chosen = [name for name in optional if draw(st.booleans())]
        return {name: draw(from_schema(properties[name])) for name in [*required, *chosen]}

    return build()


# --- hostile values ---------------------------------------------------------------------------

WRONG_TYPES: list[Any] = [True, False, None, 0, -1, 1.5, "12", "", [], {}, [1, 2], {"a": 1}]
HOSTILE: list[Any] = [
    "x" * 1_000_000,  # 1 MB of text
    "a\x00b",  # NUL, which PostgreSQL cannot store
    "\ud800",  # a lone surrogate, which is not Unicode
    "\udfff tail",
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("1e400"),  # parses to infinity
    Raw("9" * 330),
    Raw("9" * 5000),  # past Python's 4,300-digit limit for int()
    Raw("-" + "9" * 25),
    2**63,  # one past bigint
    -(2**63) - 1,
    Raw("[" * 250 + "]" * 250),
    Raw('{"a":' * 300 + "1" + "}" * 300),
    Raw("[" * 1000 + "]" * 1000),
    Raw("[" * 10_000 + "]" * 10_000),
    {"a\x00": 1},  # NUL in a key
    {"\ud800": 1},  # a lone surrogate as a key
    {"k": "\ud800"},
    "A:chat",  # ids that hold the separator of composite keys
    "%3A",
    " ",
]


def hostile_arguments(schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
    """Valid arguments for ``schema`` with one thing broken: a property given a wrong or hostile
    value, a required one left out, or one the tool does not have."""
    properties: dict[str, Schema] = schema.get("properties", {})
    names = sorted(properties)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        arguments: dict[str, Any] = draw(from_schema(schema))
        how = draw(st.sampled_from(["wrong", "hostile", "hostile", "missing", "unknown"]))
        if how == "unknown" or not names:
            arguments[draw(st.sampled_from(["extra", "\ud800", "a\x00", "__proto__"]))] = 1
        elif how == "missing" and schema.get("required"):
            arguments.pop(draw(st.sampled_from(sorted(schema["required"]))), None)
        else:
            values = WRONG_TYPES if how == "wrong" else HOSTILE
            arguments[draw(st.sampled_from(names))] = draw(st.sampled_from(values))
        return arguments

    return build()


def forged_cursors() -> st.SearchStrategy[str]:
    """Cursors a client made up: base64 of JSON whose sort key holds what no database takes."""
    import base64

    keys = st.sampled_from(
        [
            "[Infinity, 1]",
            "[1e400, 1]",
            f"[{'9' * 330}, 1]",
            '["2024-01-01T00:00:00+00:00", "a\\u0000b"]',
            '["a\\u0000b"]',
            '["\\ud800"]',
            "[true, false]",
            "[[[[[[[[1]]]]]]]]",
            '"not a list"',
        ]
    )
    return keys.map(
        lambda key: base64.urlsafe_b64encode(f'{{"k": {key}, "q": "x"}}'.encode()).decode()
    ) | st.text(max_size=50)


def fuzz(
    examples: int, fuzz_seed: int, path: str
) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Run a ``@given`` test ``examples`` times from ``fuzz_seed``, without deadlines or saved
    examples; a failure says how to replay the run (``SUPPORTMESH_FUZZ_SEED``)."""

    def wrap(test: Callable[[], None]) -> Callable[[], None]:
        seeded = seed(fuzz_seed)(
            run_with(
                max_examples=examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )(test)
        )

        def run() -> None:
            try:
                seeded()
            except BaseException as exc:
                exc.add_note(f"replay this run: SUPPORTMESH_FUZZ_SEED={fuzz_seed} pytest {path}")
                raise

        return run

    return wrap
