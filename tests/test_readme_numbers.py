"""Every interval README's "Does it work?" quotes for the controlled study is one that
``python -m experiments.controlled_study docs/results/controlled`` wrote, in ``registered.md`` or
``posthoc.md``: no number of the headline is typed by hand and left behind when the results move."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs" / "results" / "controlled"
INTERVAL = re.compile(r"\[([+\-−]?\d+\.\d+), ([+\-−]?\d+\.\d+)\]")


def _plain(text: str) -> str:
    """Unicode minus as ASCII, and every run of whitespace as one space (an interval may wrap)."""
    return re.sub(r"\s+", " ", text.replace("−", "-"))


def _intervals(text: str) -> set[tuple[float, float]]:
    return {(float(a), float(b)) for a, b in INTERVAL.findall(_plain(text))}


def controlled_section(readme: str) -> str:
    start = readme.index("## Does it work?")
    return readme[start:readme.index("The earlier, uncontrolled study", start)]


def test_every_interval_the_readme_quotes_for_the_controlled_study_is_in_the_analysis_files():
    section = controlled_section((ROOT / "README.md").read_text())
    quoted = _intervals(section)
    written = _intervals((STUDY / "registered.md").read_text()) | _intervals((STUDY / "posthoc.md").read_text())
    assert len(quoted) >= 10  # the table and the bullets: the check reads the section it means to
    missing = sorted(quoted - written)
    assert not missing, f"README quotes intervals the analysis files do not hold: {missing}"
