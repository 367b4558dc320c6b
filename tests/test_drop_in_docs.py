"""The examples of docs/api.md "CigL on your own model" run as written (issue #40)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def section_blocks() -> list[str]:
    text = (REPO / "docs" / "api.md").read_text()
    start = text.index("## CigL on your own model")
    section = text[start:text.index("\n## ", start + 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_first_example_is_at_most_20_lines():
    first = [line for line in section_blocks()[0].splitlines() if line.strip()]
    assert len(first) <= 20, f"{len(first)} lines"


@pytest.mark.slow
def test_the_drop_in_examples_run_and_give_the_sparsity_and_calibration_scores(cifar_data_dir, monkeypatch, capsys,
                                                                            tmp_path):
    monkeypatch.setenv("CIGL_DATA_DIR", str(cifar_data_dir))
    blocks = section_blocks()
    assert len(blocks) == 2
    ns: dict = {"__name__": "api_doc_drop_in"}
    blocks[1] = blocks[1].replace("/tmp/resnet18-cigl.safetensors", str(tmp_path / "resnet18.safetensors"))
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), ns)
    printed = capsys.readouterr().out
    # example 1: the model holds the target sparsity, and both networks were calibration-scored
    cigl = ns["cigl"]
    model_cigl_density = 1 - sum(int((p != 0).sum()) for n, p in ns["model"].named_parameters()
                                 if n.endswith("weight") and p.dim() > 1) / sum(
        p.numel() for n, p in ns["model"].named_parameters() if n.endswith("weight") and p.dim() > 1)
    assert abs(model_cigl_density - 0.9) < 0.01
    assert "last weights {'accuracy'" in printed and "WMA {'accuracy'" in printed and "'ece'" in printed
    # example 2: AdamW on a torchvision ResNet-18, conv weights only, exported
    assert cigl.net.sparse_names[-1] != "fc.weight" and abs(1 - cigl.net.mask.density - 0.8) < 0.01
    assert cigl.wma.count == 1 and (tmp_path / "resnet18.safetensors").is_file()
    assert "ResNet-18 conv sparsity 0.8" in printed
