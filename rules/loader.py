"""Load a rules file into a `Catalog`, or refuse it with every problem at once (SPEC 3)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from rules.checks import reference_problems
from rules.errors import Problem, RulesError
from rules.models import CONDITION_KEYS, SKIP_REFERENCES, Catalog

#: Keys whose value selects the variant of a tagged union; pydantic puts that value
#: into an error's location, which is not a path into the file.
_DISCRIMINATORS = ("model", "kind")
#: Tags of the unions told apart by their keys (a composite's conditions): also in an
#: error's location, and no key of the file either.
_TAGS = frozenset(CONDITION_KEYS.values())


def load_catalog(path: str | Path) -> Catalog:
    """Read, parse and check a YAML rules file. Raises `RulesError` listing every problem."""
    return read_catalog(path)[1]


def read_catalog(path: str | Path) -> tuple[str, Catalog]:
    """The file's text and its catalog, parsed from that very text (a reload hashes and
    stores what it parsed, never a second read). Raises `RulesError` listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RulesError(source, [Problem("", f"cannot read the rules file: {exc}")]) from exc
    return text, parse_catalog_text(text, source)


def parse_catalog_text(text: str, source: str) -> Catalog:
    """A catalog from YAML text (a file's, or the one the service keeps in Redis)."""
    return parse_catalog(_parse_yaml(text, source), source)


def catalog_yaml(catalog: Catalog) -> str:
    """A catalog as YAML that parses back to the same catalog (and version): what a service
    given a catalog rather than a file keeps for the command line."""
    return str(yaml.safe_dump(catalog.model_dump(mode="json"), sort_keys=False, allow_unicode=True))


def parse_catalog(data: object, source: str) -> Catalog:
    """Check already-parsed data (a dict as from YAML). Raises `RulesError` listing every problem."""
    problems = reference_problems(data)
    try:
        catalog = Catalog.model_validate(data, context={SKIP_REFERENCES: True})
    except ValidationError as exc:
        raise RulesError(source, _pydantic_problems(exc.errors(), data) + problems) from exc
    if problems:
        raise RulesError(source, problems)
    return catalog


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (YAML silently keeps the last)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, str | int) and key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} at line {mark.line + 1}", mark
            )
        if isinstance(key, str | int):
            seen.add(key)
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node))


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _parse_yaml(text: str, source: str) -> object:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise RulesError(source, [Problem("", _yaml_message(exc))]) from exc


def _yaml_message(exc: yaml.YAMLError) -> str:
    """One line: the reason and where it is (YAML's own message spans several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        reason = " ".join(part for part in (exc.context, exc.problem) if part)
        mark = exc.problem_mark or exc.context_mark
        if mark is not None:
            return f"YAML syntax error: {reason} (line {mark.line + 1}, column {mark.column + 1})"
        return f"YAML syntax error: {reason}"
    return "YAML syntax error: " + " ".join(str(exc).split())


def _pydantic_problems(errors: Iterable[ErrorDetails], data: object) -> list[Problem]:
    problems: list[Problem] = []
    for error in errors:
        where = ".".join(str(part) for part in _file_path(error["loc"], data))
        problems.append(Problem(where, _message(error)))
    return problems


def _file_path(loc: tuple[int | str, ...], data: object) -> list[int | str]:
    """Drop the union tags and validator names pydantic adds to a location."""
    path: list[int | str] = []
    node = data
    for part in loc:
        if isinstance(node, Mapping):
            if part not in node and (part in _TAGS or any(node.get(key) == part for key in _DISCRIMINATORS)):
                continue  # a tagged-union variant name, not a key
            path.append(part)
            node = node.get(part)
        elif isinstance(node, list | tuple) and isinstance(part, int):
            path.append(part)
            node = node[part] if 0 <= part < len(node) else None
        else:
            path.append(part)
            node = None
    return path


def _message(error: ErrorDetails) -> str:
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    if error["type"] in {
        "greater_than_equal",
        "greater_than",
        "less_than",
        "less_than_equal",
        "literal_error",
    }:
        return f"{message} (got {error['input']!r})"
    return message
