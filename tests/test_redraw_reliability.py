"""experiments.redraw_reliability: a run's reliability.png drawn again from the bins of its metrics.json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from cigl_bayes import metrics
from cigl_bayes.experiments import redraw_reliability
from cigl_bayes.runs import RunFolderBusy, RunFolderLock

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run_folder(path, with_bins: bool = True):
    """A finished run's small files as evaluation writes them: two predictors, one over-confident in
    every bin (confident logits, random labels) and one with informative logits."""
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 10, (3000,), generator=g)
    confident = torch.randn(3000, 10, generator=g, dtype=torch.float64) * 10
    soft = torch.randn(3000, 10, generator=g, dtype=torch.float64) * 0.3
    soft[torch.arange(3000), y] += 1.0
    data = {"final": metrics.reliability_data(confident, y), "wma": metrics.reliability_data(soft, y)}
    result = {"method": "cigl", "model": "wrn-22-2", "sparsity_target": 0.95, "completed": True}
    if with_bins:
        result["reliability"] = {"test": {k: metrics.reliability_to_dict(d) for k, d in data.items()}}
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(result))
    (path / "reliability.png").write_bytes(PNG_MAGIC + b"the old drawing")
    return data


def test_the_redrawn_diagram_has_the_evaluation_panels_title_and_ece(tmp_path, monkeypatch):
    data = _run_folder(tmp_path / "runs" / "cigl-plain-s0.95-seed0")
    drawn = {}

    def capture(diagrams, path, *, title=None, **kw):
        drawn.update(diagrams=diagrams, path=path, title=title)
        return metrics.plot_reliability_diagram(diagrams, path, title=title, **kw)

    monkeypatch.setattr(redraw_reliability, "plot_reliability_diagram", capture)
    assert redraw_reliability.main([str(tmp_path / "runs"), "--no-progress"]) == 0
    assert list(drawn["diagrams"]) == ["final", "wma"]  # the order evaluation wrote them
    assert drawn["title"] == "cigl · wrn-22-2 · sparsity 0.95"
    for name, d in drawn["diagrams"].items():
        assert d.ece == pytest.approx(data[name].ece, abs=1e-12)
        assert (d.counts == data[name].counts).all()
    png = (tmp_path / "runs" / "cigl-plain-s0.95-seed0" / "reliability.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and b"the old drawing" not in png
    assert not (tmp_path / "runs" / "cigl-plain-s0.95-seed0" / ".lock").exists()


def test_a_run_without_bins_is_named_and_left_as_it_was(tmp_path, capsys):
    _run_folder(tmp_path / "old", with_bins=False)
    _run_folder(tmp_path / "new")
    assert redraw_reliability.main([str(tmp_path), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "redrew 1 reliability.png of 2 run folders" in out
    assert "old keeps no reliability bins" in err
    assert (tmp_path / "old" / "reliability.png").read_bytes() == PNG_MAGIC + b"the old drawing"


def test_a_folder_another_process_writes_is_refused(tmp_path):
    _run_folder(tmp_path / "run")
    with RunFolderLock(tmp_path / "run"):
        with pytest.raises(RunFolderBusy):
            redraw_reliability.redraw(tmp_path / "run")
    assert (tmp_path / "run" / "reliability.png").read_bytes() == PNG_MAGIC + b"the old drawing"


def test_bad_paths_get_one_line_and_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    for arg, words in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "empty", "no run folder")):
        proc = subprocess.run([sys.executable, "-m", "experiments.redraw_reliability", str(arg)],
                              capture_output=True, text=True)
        assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_corrupt_metrics_json_is_named_and_the_other_runs_are_still_redrawn(tmp_path, capsys):
    _run_folder(tmp_path / "a-good")
    _run_folder(tmp_path / "b-broken")
    (tmp_path / "b-broken" / "metrics.json").write_text('{"method": "cigl", "reliab')
    _run_folder(tmp_path / "c-good")
    with pytest.raises(redraw_reliability.UnreadableRun, match=r"1 run folder\(s\) left as they were: .*b-broken"):
        redraw_reliability.main([str(tmp_path), "--no-progress"])
    assert "redrew 2 reliability.png of 3 run folders" in capsys.readouterr().out
    for good in ("a-good", "c-good"):  # the folders after the broken one were redrawn too
        assert (tmp_path / good / "reliability.png").read_bytes() != PNG_MAGIC + b"the old drawing"
    assert (tmp_path / "b-broken" / "reliability.png").read_bytes() == PNG_MAGIC + b"the old drawing"
    proc = subprocess.run([sys.executable, "-m", "experiments.redraw_reliability", str(tmp_path / "b-broken"),
                           "--no-progress"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "b-broken" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
