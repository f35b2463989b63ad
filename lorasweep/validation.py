"""Reading and checking user input: YAML files, typed fields, and errors of one line.

Every problem with what a user wrote is a `ConfigError` whose message is one line naming the
source (file), the field and what is allowed; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """Bad user input: the message is one line naming the file, the field and what is allowed."""

    def __init__(self, message: str) -> None:
        # a message quotes what the user wrote (a key, a path, a library's reason), which may hold
        # line breaks: they are escaped, as repr() would, so the message stays one line
        super().__init__(message.translate(_ESCAPED_LINE_BREAKS))


# every character str.splitlines() breaks at
_ESCAPED_LINE_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"})


def load_yaml(path: Path) -> Any:
    """Read a YAML file, turning every way it can be unreadable into a one-line ConfigError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err.__class__.__name__}: {err})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}") from None
    except (ValueError, TypeError, AttributeError, RecursionError) as err:
        # PyYAML's constructors fail this way on values its parser accepted: a date such as
        # 2020-13-45, `!!int abc`, `!!timestamp 5`, an integer of over 4300 digits; and nesting
        # deeper than Python's recursion limit
        reason = str(err) or err.__class__.__name__
        raise ConfigError(f"{path}: invalid YAML: a value cannot be read ({reason})") from None


def coerce(value: Any, kind: type, source: str, name: str) -> Any:
    """Check one value against a field type; YAML reads `3e-4` as a string, so accept that.

    Errors start with `source` when one is given (a config built in code has none).
    """
    where = f"{source}: field '{name}'" if source else f"field '{name}'"
    if kind is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = {
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        bool: isinstance(value, bool),
        dict: isinstance(value, dict),
    }[kind]
    if not ok:
        raise ConfigError(f"{where} is {value!r}; expected {_type_name(kind)}")
    if kind is int and not -(2**63) <= value < 2**63:  # torch takes sizes and seeds as 64-bit
        raise ConfigError(f"{where} is out of range; expected an integer in -2**63..2**63-1")
    if kind is float:
        try:
            value = float(value)
        except OverflowError:  # an integer beyond the float range, e.g. 10**400
            raise ConfigError(f"{where} is too large; expected a finite number") from None
        if not math.isfinite(value):
            raise ConfigError(f"{where} is {value!r}; expected a finite number")
    return value


def field_kind(hint: Any) -> type:
    """The scalar type a field holds: int, float, str or bool (a Literal of choices is str);
    a nested config's class as it is."""
    if typing.get_origin(hint) is Literal:
        return str
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = args[0] if args else hint
    return typing.get_origin(kind) or kind  # dict[str, Any]: dict


def choices_of(hint: Any) -> tuple[str, ...] | None:
    """The allowed values of a Literal field, None for any other."""
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else None


def unknown(what: str, name: Any, allowed: Iterable[str], prefix: str = "", of: str = "") -> str:
    """The message for a key `name` (under `prefix`, e.g. "world."; of what `of` names) that is none
    of `allowed`: unknown field 'learning_rat'; did you mean 'learning_rate'? (allowed: ...)"""
    allowed = list(allowed)
    hint = did_you_mean(name, allowed, prefix)
    return f"unknown {what} '{prefix}{name}'{of}{hint} (allowed: {', '.join(allowed) or 'none'})"


def did_you_mean(name: Any, allowed: Iterable[str], prefix: str = "") -> str:
    """ "; did you mean 'learning_rate'?" when one of `allowed` is close to `name`, else ""."""
    close = difflib.get_close_matches(str(name), list(allowed), n=1, cutoff=0.75)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def typed_fields(cls: type, data: Any, source: str, prefix: str) -> dict[str, Any]:
    """The fields of dataclass `cls` that the mapping `data` gives, each checked against its type."""
    if not isinstance(data, dict):
        what = prefix.rstrip(".") or "the config"
        raise ConfigError(f"{source}: {what} must be a mapping of field: value")
    types = _hints(cls)
    values = {}
    for key, value in data.items():
        if key not in types:
            raise ConfigError(f"{source}: {unknown('field', key, types, prefix)}")
        kind = field_kind(types[key])
        if dataclasses.is_dataclass(kind) or (value is None and type(None) in typing.get_args(types[key])):
            values[key] = value
            continue
        values[key] = coerce(value, kind, source, prefix + key)
    return values


def check_types(obj: Any, prefix: str) -> None:
    """Every field holds a value of its type (a number given as text, or an integer for a float,
    is converted), and a Literal field one of its choices."""
    for name, hint in _hints(type(obj)).items():
        value = getattr(obj, name)
        kind = field_kind(hint)
        if dataclasses.is_dataclass(kind):  # a nested config checks itself
            if not isinstance(value, kind):
                raise ConfigError(f"field '{prefix}{name}' is {value!r}; expected a {kind.__name__}")
            continue
        if value is None and type(None) in typing.get_args(hint):
            continue
        object.__setattr__(obj, name, coerce(value, kind, "", prefix + name))  # frozen dataclasses too
        choices = choices_of(hint)
        if choices is not None and value not in choices:
            raise ConfigError(f"field '{prefix}{name}' is {value!r}; allowed: {', '.join(choices)}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(kind: type) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}
    return names[kind]


def check(obj: Any, name: str, ok: bool, allowed: str) -> None:
    if not ok:
        value = getattr(obj, name.rsplit(".", 1)[-1])
        raise ConfigError(f"field '{name}' is {value!r}; allowed: {allowed}")
