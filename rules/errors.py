"""The catalog's own errors: a rules file is either a valid `Catalog` or a `RulesError` that
lists every problem at once, each with a dotted path into the file.

`rules` imports nothing of the engine (`metering`) or the service (`consumers`); the
engine's error tree (`metering.errors`) re-exports these names, so callers catch one tree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Problem:
    """One finding in a rules file: a dotted path into the file and the reason."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where or '<root>'}: {self.message}"


class RulesError(Exception):
    """A rules catalog is invalid; carries every problem found, not just the first.

    Never retriable: the same file fails the same way until someone edits it."""

    retriable: ClassVar[bool] = False

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}: " + "; ".join(map(str, problems)))
