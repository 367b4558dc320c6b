"""The mutation check's list (tests/mutants.py) stays applicable: every mutant's snippet occurs
exactly once in its file and every test it names exists, so a refactor that moves code shows up
here, in the ordinary test run, and not only when someone runs `python -m tests.mutation`."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO
from tests.mutants import MUTANTS


def test_mutant_names_are_unique():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_each_mutant_applies_exactly_once_and_names_existing_tests(mutant):
    source = (REPO / mutant.path).read_text()
    found = source.count(mutant.old)
    assert found == 1, f"{mutant.name}: its snippet occurs {found}× in {mutant.path}"
    assert mutant.old != mutant.new
    for node in mutant.tests:
        path, _, name = node.partition("::")
        text = (REPO / path).read_text()
        if name:
            function, _, case = name.partition("[")  # a parametrized test: its function, and the case's id in it
            assert re.search(rf"^def {re.escape(function)}\(", text, re.M), f"{mutant.name}: no test {node}"
            assert not case or f'"{case.rstrip("]")}"' in text, f"{mutant.name}: no case {case.rstrip(']')!r} in {path}"
