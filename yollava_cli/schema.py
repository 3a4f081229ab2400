"""Reading the JSON a user can reach (config.json, a dataset's files, a bundle's manifest, a
checkpoint's metadata) against its schema. pydantic validates strictly ("4" is not 4, NaN is not a
number), and the first problem becomes one line naming the file and the key, with what was
expected and what was found:

    config.json: "feature_cache_mb" must be a whole number from 64 to 1048576 (got "big")

This module and the schemas built on it are imported only by what reads such a file: importing
them costs ~0.2 s (pydantic's parts and building the schemas), which `--help`, `list`, `show` and
`note` do not pay. `config.json`'s schema is here too: config.py sits beside errors.py, used by
every floor, and must stay light."""

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from yollava_cli.config import DEVICES, PRECISIONS, QUANTIZE
from yollava_cli.errors import UserError

T = TypeVar("T")
MAX_FILE_BYTES = 64 * 2**20  # a config or dataset file this big is not one


class Schema(BaseModel):
    """A JSON object: unknown keys are refused (a misspelt key is not silently ignored), numbers
    must be finite, and nothing is coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class OpenSchema(Schema):
    """A JSON object that may carry keys this version does not know (a file a newer yollava wrote);
    the keys it knows are checked all the same, the others kept as they are."""

    model_config = ConfigDict(extra="allow")


def rule(check):
    """A validator from a function that raises UserError (the store's own rules: names, facts),
    so that pydantic reports it at its key."""
    def validate(value):
        try:
            return check(value)
        except UserError as e:
            raise ValueError(str(e)) from None
    return AfterValidator(validate)


Text = Annotated[str, Field(min_length=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]


# -- config.json --------------------------------------------------------------------------------


class ConfigFile(Schema):
    """config.json in the data dir; every key optional."""

    model: Text | None = None
    default_pools: list[Text] = []
    # the image-feature cache's cap, disk and memory alike: a few LLaVA-1.5 photos at the least
    # (4.7 MB each), at most 1 TB
    feature_cache_mb: Annotated[int, Field(ge=64, le=2**20)] = 4096
    device: Literal[DEVICES] | None = None
    precision: Literal[PRECISIONS] | None = None
    quantize: Literal[QUANTIZE] | None = None
    ray: Text | None = None  # --ray when it is not given: "auto", a cluster's HOST:PORT, or "off"
    serve_host: Text | None = None  # `serve`'s --host, --port and --token when they are not given
    serve_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    serve_token: Text | None = None


# -- reading and validating ---------------------------------------------------------------------


def read_json(path: Path, kind: type[T], where: str | None = None) -> T:
    """The file's JSON as `kind`, or a one-line UserError naming the file (as `where`) and the key."""
    where = where or str(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise UserError(f"{where}: over {MAX_FILE_BYTES // 2**20} MB; this is not the file it should be")
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{where}: cannot read it ({e.strerror or e})") from None
    return parse_json(data, kind, where)


def parse_json(data: bytes, kind: type[T], where: str) -> T:
    """`data` (UTF-8 JSON, a leading byte-order mark allowed) as `kind`, or a one-line UserError."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); save it as UTF-8") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise UserError(f"{where}: malformed JSON (nested too deeply)") from None
    except ValueError as e:
        raise UserError(f"{where}: malformed JSON ({e})") from None
    return validate(value, kind, where)


def validate(value: Any, kind: type[T], where: str) -> T:
    """`value` (parsed JSON) as `kind`, or a one-line UserError naming `where` and the key."""
    adapter = adapter_for(kind)
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        more = f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})" if len(errors) > 1 else ""
        raise UserError(f"{where}: {explain(errors[0], adapter.json_schema())}{more}") from None


@lru_cache(maxsize=None)
def adapter_for(kind) -> TypeAdapter:
    return TypeAdapter(kind)


# -- one error, one line ------------------------------------------------------------------------


def explain(error: dict, schema: dict) -> str:
    """What is wrong at the error's key, in the words a user fixes a file with."""
    loc, kind = tuple(error["loc"]), error["type"]
    if loc and loc[-1] == "[key]":
        return f"key {shown(loc[-2])}{in_key(loc[:-2])}: {reason(error)}"
    if kind == "missing":
        return f"missing {key_path(loc)} ({expected(node_at(schema, loc))})"
    if kind == "extra_forbidden":
        known = sorted(node_at(schema, loc[:-1]).get("properties", {}))
        return f"unknown key {shown(loc[-1])}{in_key(loc[:-1])} (known: {', '.join(known)})"
    subject = f"{key_path(loc)} " if loc else ""
    if kind in ("value_error", "assertion_error"):
        return f"{subject.rstrip()}: {reason(error)}" if loc else reason(error)
    return f"{subject}must be {expected(node_at(schema, loc))} (got {shown(error['input'])})"


def reason(error: dict) -> str:
    return re.sub(r"^(Value|Assertion) error, ", "", error["msg"])


def in_key(loc: tuple) -> str:
    return f" in {key_path(loc)}" if loc else ""


def key_path(loc: tuple) -> str:
    """`"feature_cache_mb"`, `"dog.train[0]"`; a key that is not a plain word stays in quotes:
    `"dog/test/03.jpg".options`."""
    parts, plain = [], True
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif re.fullmatch(r"[A-Za-z0-9_<>-]+", part):
            parts.append(("." if parts else "") + part)
        else:
            parts.append(("." if parts else "") + json.dumps(part, ensure_ascii=False))
            plain = False
    path = "".join(parts)
    return f'"{path}"' if plain else path


def shown(value) -> str:
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    if isinstance(value, list):
        return f"a list of {len(value)}" if value else "an empty list"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:36] + '..."' * isinstance(value, str)


def node_at(schema: dict, loc: tuple) -> dict:
    """The JSON schema of the value at `loc`."""
    defs = schema.get("$defs", {})
    node = resolve(schema, defs)
    for part in loc:
        if isinstance(part, int):
            node = node.get("items", {})
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        else:
            extra = node.get("additionalProperties")
            node = extra if isinstance(extra, dict) else {}
        node = resolve(node, defs)
    return node


def resolve(node: dict, defs: dict) -> dict:
    """The node behind a $ref, and behind `X or null`, the X (keeping the field's own description)."""
    while "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    options = [o for o in node.get("anyOf", []) if o.get("type") != "null"]
    if len(options) == 1:
        node = {**resolve(options[0], defs), **{k: v for k, v in node.items() if k not in ("anyOf", "default")}}
    return node


def expected(node: dict) -> str:
    """What the schema wants at a key, in words: "a whole number from 1 to 64", "a list of strings"."""
    if node.get("description") and node.get("type") != "object":  # an object's is its class docstring
        return node["description"]
    if "enum" in node:
        values = [json.dumps(v) for v in node["enum"]]
        return values[0] if len(values) == 1 else "one of " + ", ".join(values)
    if "const" in node:
        return json.dumps(node["const"])
    kind = node.get("type")
    if kind in ("integer", "number"):
        return ("a whole number" if kind == "integer" else "a number") + bounds(node)
    if kind == "string":
        length = f" of at most {node['maxLength']} characters" if "maxLength" in node else ""
        return ("a non-empty string" if node.get("minLength") else "a string") + length
    if kind == "boolean":
        return "true or false"
    if kind == "array":
        items = node.get("items", {})
        plain = items.get("type") in ("string", "integer", "number", "object") and not items.get("description")
        of = f" of {plural(expected(items))}" if plain else ""
        count = ""
        if node.get("minItems") and node.get("minItems") == node.get("maxItems"):
            count = f", exactly {node['minItems']}"
        elif node.get("maxItems") is not None:
            count = f", at most {node['maxItems']}"
        elif node.get("minItems"):
            count = f", at least {node['minItems']}"
        return "a list" + of + count
    if kind == "object":
        least = node.get("minProperties")
        return f"an object with at least {least} key{'s' * (least > 1)}" if least else "an object"
    if kind == "null":
        return "null"
    return "a valid value"


def plural(thing: str) -> str:
    """ "a non-empty string" -> "non-empty strings", "a whole number from 0 to 1" -> "whole numbers from 0 to 1"."""
    words = re.sub(r"^an? ", "", thing).split(" ", 2)
    noun = 1 if words[0] in ("whole", "non-empty") and len(words) > 1 else 0
    words[noun] += "s"
    return " ".join(words)


def bounds(node: dict) -> str:
    low = node.get("minimum", node.get("exclusiveMinimum"))
    high = node.get("maximum", node.get("exclusiveMaximum"))
    if "minimum" in node and "maximum" in node:
        return f" from {number(low)} to {number(high)}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if 'exclusiveMinimum' in node else '>='} {number(low)}")
    if high is not None:
        parts.append(f"{'<' if 'exclusiveMaximum' in node else '<='} {number(high)}")
    return " " + " and ".join(parts) if parts else ""


def number(value) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)
