"""Paths the tests read, resolved from the repository (never one machine's absolute path)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PATH = ROOT / "rules" / "example.yaml"


def shared_example() -> Path:
    """The product's example catalog, `shared/examples/rules.yaml` beside the checkout (the
    nearest `shared/` folder above the repository). Missing is a failure, never a skip: the
    packaged example is checked against it."""
    for parent in ROOT.parents:
        candidate = parent / "shared" / "examples" / "rules.yaml"
        if candidate.is_file():
            return candidate
    pytest.fail(f"no shared/examples/rules.yaml in any folder above {ROOT}", pytrace=False)
