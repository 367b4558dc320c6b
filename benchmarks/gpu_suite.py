"""Every GPU figure of the project in one command, in stages that each fit one 10-minute call.

    python -m benchmarks.gpu_suite --out gpu-results                    # all stages, in order
    python -m benchmarks.gpu_suite --out gpu-results --stage step       # one stage
    python -m benchmarks.gpu_suite --out /tmp/dry --dry-run             # every code path, tiny, on CPU

Stages (each writes ``OUT/<stage>.json``; ``OUT/summary.md`` is rebuilt from every stage file
present, so stages run in separate calls add up):

  env       GPU name, torch / CUDA / cuDNN versions, and the CUDA-only tests (``pytest -m cuda``)
  step      per-step times of dense, rigl, cigl, cigl-svi for WRN-22-2 and CIFAR ResNet-50 at the
            default fast path (bf16 autocast + channels-last), ``--compile`` off and on; counted
            TFLOP/s; cigl_over_dense and svi_over_cigl on the GPU
  epoch     whole epochs of cigl on full CIFAR-10 for WRN-22-2 and ResNet-50: s/epoch, images/s,
            GPU busy fraction, TFLOP/s, against the targets (≤ 3 s and ≤ 10 s; stretch 1.5 s, 5 s)
  imagenet  the ImageNet path on a generated ImageFolder: batches/s with JPEG decoding on the GPU
            (``torchvision.io.decode_jpeg``) and in CPU workers, and one cigl step on it
  pair      a ``gpu-short`` pair (rigl and cigl at 0.95, seed 0) if ``--budget-s`` allows, and the
            per-epoch time extrapolated to the whole gpu-short grid

``--dry-run`` runs every stage's code on the CPU with tiny sizes (small-cnn, a few hundred
synthetic images, one step or epoch): the test suite runs it, so nothing is executed for the
first time on a lent GPU.  Set-up on a lent machine: docs/performance.md, "GPU suite".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cigl_bayes.experiments.cli import ArgumentParser, run_cli
from cigl_bayes.runs import atomic_write_bytes, atomic_write_json

from .common import check_options, given_options

STAGES = ("env", "step", "epoch", "imagenet", "pair")
TARGETS = {"wrn-22-2": (3.0, 1.5), "resnet50": (10.0, 5.0)}  # s/epoch: target, stretch goal
REPO = Path(__file__).resolve().parents[1]
CUDA_TEST_FILES = ("tests/test_cuda.py", "tests/test_data.py")  # the ones with cuda-marked tests


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each stage measures: the real sizes, or the dry run's tiny ones."""

    models: tuple[str, ...] = ("wrn-22-2", "resnet50")
    batch_size: int = 128
    step_rounds: int = 10
    step_steps: int = 5
    epoch_images: int | None = None  # None: real CIFAR-10 (45,000 training images)
    epochs: int = 2
    imagenet_images: int = 512
    imagenet_size: int = 256
    pair_epochs: int = 40
    pair_subset: int | None = None
    device: str = "cuda"


DRY = Sizes(models=("small-cnn",), batch_size=16, step_rounds=1, step_steps=1, epoch_images=64, epochs=1,
            imagenet_images=12, imagenet_size=48, pair_epochs=1, pair_subset=256, device="cpu")


# -- stages ---------------------------------------------------------------------------------------------------
def stage_env(sizes: Sizes, out: Path, dry: bool) -> dict:
    info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    import importlib.util

    if not all((REPO / f).is_file() for f in CUDA_TEST_FILES):
        info["cuda_tests"] = {"exit_code": None, "seconds": 0.0,
                              "summary": "not run: the tests come with the source checkout, not the installed package"}
        return info
    if importlib.util.find_spec("pytest") is None:
        info["cuda_tests"] = {"exit_code": None, "summary": "not run: pytest is not installed (see the set-up line)",
                              "seconds": 0.0}
        return info
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                           *CUDA_TEST_FILES], cwd=REPO, capture_output=True, text=True)
    tail = (proc.stdout + proc.stderr).strip().splitlines()
    info["cuda_tests"] = {"exit_code": proc.returncode, "summary": tail[-1] if tail else "",
                          "seconds": time.perf_counter() - start}
    return info


def stage_step(sizes: Sizes, out: Path, dry: bool) -> dict:
    from cigl_bayes.benchmarks import step_time

    results = {}
    for model in sizes.models:
        for compiled in (False, True):
            label = f"{model}{' compiled' if compiled else ''}"
            path = out / "raw" / f"step-{model}-{'compiled' if compiled else 'eager'}.json"
            args = ["--model", model, "--batch-size", str(sizes.batch_size), "--device", sizes.device,
                    "--rounds", str(sizes.step_rounds), "--steps", str(sizes.step_steps), "--warmup", "1",
                    "--out", str(path)] + (["--compile"] if compiled else [])
            step_time.main(args)
            results[label] = json.loads(path.read_text())
    return results


def stage_epoch(sizes: Sizes, out: Path, dry: bool) -> dict:
    from cigl_bayes.benchmarks import epoch_time

    results = {}
    for model in sizes.models:
        path = out / "raw" / f"epoch-{model}.json"
        args = ["--model", model, "--method", "cigl", "--batch-size", str(sizes.batch_size), "--device", sizes.device,
                "--epochs", str(sizes.epochs), "--out", str(path)]
        if sizes.epoch_images is not None:
            args += ["--synthetic", "--subset", str(sizes.epoch_images)]
        epoch_time.main(args)
        r = json.loads(path.read_text())
        target, stretch = TARGETS.get(model, (None, None))
        r["target_seconds"], r["stretch_seconds"] = target, stretch
        r["meets_target"] = None if target is None else r["seconds_per_epoch"] <= target
        r["meets_stretch"] = None if stretch is None else r["seconds_per_epoch"] <= stretch
        results[model] = r
    return results


def write_image_folder(root: Path, images: int, size: int, classes: int = 4) -> Path:
    """A generated ImageNet-layout folder (JPEG, ``size``±25% pixels a side): train/ and val/."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", images), ("val", max(classes, images // 4))):
        for i in range(count):
            c = i % classes
            folder = root / "imagenet" / split / f"n{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            h, w = (int(size * f) for f in rng.uniform(0.75, 1.25, 2))
            pixels = np.clip(rng.normal(60 + 40 * c, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i:05d}.JPEG", quality=90)
    return root


def stage_imagenet(sizes: Sizes, out: Path, dry: bool) -> dict:
    from cigl_bayes import imagenet
    from cigl_bayes.config import TrainConfig
    from cigl_bayes.inference.training import Trainer
    from cigl_bayes.train import build_data

    device = torch.device(sizes.device)
    results = {}
    with tempfile.TemporaryDirectory(prefix="cigl-imagenet-") as tmp:
        start = time.perf_counter()
        root = write_image_folder(Path(tmp), sizes.imagenet_images, sizes.imagenet_size)
        results["generate_seconds"] = time.perf_counter() - start
        index = imagenet.index_folder(imagenet.find_imagenet(root) / "train")
        batch = min(sizes.batch_size, len(index))
        modes = ["workers"] + (["cuda"] if device.type == "cuda" else [])
        for mode in modes:
            loader = imagenet.ImageNetLoader(index, batch_size=batch, device=device, train=True, shuffle=True,
                                             decode_on=mode, num_workers=0 if dry else None)
            next(iter(loader.epoch(0)))  # warm-up (workers, nvjpeg)
            start = time.perf_counter()
            n = sum(x.shape[0] for x, _ in loader.epoch(1))
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            results[f"decode_{mode}"] = {"images": n, "seconds": seconds, "images_per_second": n / seconds}
        cfg = TrainConfig(dataset="imagenet", model="small-cnn" if dry else "resnet50-imagenet", method="cigl",
                          data_dir=str(root), batch_size=batch, epochs=1, device=str(device), sparsity=0.9)
        with tempfile.TemporaryDirectory(prefix="cigl-imagenet-run-") as run_dir:
            trainer = Trainer(cfg, run_dir, progress=False, data=build_data(cfg, device))
            x, y = next(iter(trainer.data.train.epoch(0)))
            start = time.perf_counter()
            loss = float(trainer.train_step(x, y))
            results["train_step"] = {"model": cfg.model, "batch_size": batch, "loss": loss,
                                     "seconds": time.perf_counter() - start}
    return results


def stage_pair(sizes: Sizes, out: Path, dry: bool, budget_s: float) -> dict:
    """rigl and cigl at 0.95, seed 0, gpu-short protocol; skipped when one epoch's estimate × the
    pair's epochs exceeds ``budget_s``."""
    from cigl_bayes.experiments import sweep

    epoch_file = out / "epoch.json"
    per_epoch = None
    if epoch_file.exists():
        per_epoch = json.loads(epoch_file.read_text()).get("wrn-22-2", {}).get("seconds_per_epoch")
    estimate = None if per_epoch is None else 2 * sizes.pair_epochs * per_epoch * 1.15  # + evaluation
    result: dict = {"seconds_per_epoch_measured": per_epoch, "estimate_seconds": estimate, "budget_s": budget_s}
    grid_cells = len(sweep.grid(*(sweep.PROTOCOLS["gpu-short"][k] for k in ("methods", "sparsities", "seeds"))))
    if per_epoch is not None:
        result["grid_cells"] = grid_cells
        result["grid_hours_extrapolated"] = grid_cells * sizes.pair_epochs * per_epoch * 1.15 / 3600
    if not dry and (estimate is None or estimate > budget_s):
        result["skipped"] = "no WRN-22-2 epoch time yet (run --stage epoch first)" if estimate is None else \
            f"the pair would take ≈ {estimate:.0f} s, over the budget of {budget_s:.0f} s"
        return result
    args = ["--protocol", "gpu-short", "--methods", "rigl", "cigl", "--sparsities", "0.95", "--seeds", "0",
            "--epochs", str(sizes.pair_epochs), "--results", str(out / "runs"), "--study", "gpu-short-pair",
            "--device", sizes.device, "--no-progress"]
    if dry:  # every code path, nothing of the real size
        args += ["--subset", str(sizes.pair_subset), "--model", sizes.models[0], "--test-subset", "128"]
    start = time.perf_counter()
    sweep.main(args)
    result["seconds"] = time.perf_counter() - start
    result["runs"] = list(csv_rows(out / "runs" / "gpu-short-pair" / "runs.csv"))
    if dry:  # the dry run's pair is tiny and says nothing about the grid
        result.pop("grid_hours_extrapolated", None)
    return result


def csv_rows(path: Path):
    import csv

    with open(path) as f:
        yield from csv.DictReader(f)


# -- summary --------------------------------------------------------------------------------------------------
def summary_markdown(out: Path) -> str:
    """Markdown of every stage file present in ``out``."""
    lines = ["# GPU suite", ""]
    env = _load(out / "env.json")
    if env:
        lines += [f"GPU: {env.get('gpu', 'none (dry run)')}, torch {env['torch']}, CUDA {env['cuda']}, "
                  f"cuDNN {env['cudnn']}.  CUDA-only tests: {env['cuda_tests']['summary']} "
                  f"(exit {env['cuda_tests']['exit_code']}).", ""]
    step = _load(out / "step.json")
    if step:
        lines += ["## Step time (ms/step; achieved TFLOP/s in brackets)", "",
                  "| model | fast path | dense | rigl | cigl | cigl-svi | cigl fp32 | cigl_over_dense "
                  "| svi_over_cigl |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for label, r in _stage_items(step):
            cells = [f"{r['seconds_per_step'][k] * 1e3:.1f} ({r['achieved_gflops'][k] / 1e3:.2f})"
                     for k in ("dense", "rigl", "cigl", "cigl-svi", "cigl-fp32")]
            lines.append(f"| {label} | {r['fast_path']} | " + " | ".join(cells)
                         + f" | {r['cigl_over_dense']:.3f} | {r['svi_over_cigl']:.3f} |")
        lines.append("")
    epoch = _load(out / "epoch.json")
    if epoch:
        lines += ["## Whole epochs (cigl)", "",
                  "| model | s/epoch | images/s | GPU busy | TFLOP/s | target | stretch |",
                  "|---|---|---|---|---|---|---|"]
        for model, r in _stage_items(epoch):
            busy = "n/a" if r["gpu_busy_fraction"] is None else f"{r['gpu_busy_fraction']:.0%}"
            verdict = {True: "met", False: "missed", None: "–"}
            lines.append(f"| {model} | {r['seconds_per_epoch']:.2f} | {r['images_per_second']:.0f} | {busy} | "
                         f"{r['achieved_gflops'] / 1e3:.2f} | ≤ {r['target_seconds']} s: "
                         f"{verdict[r['meets_target']]} | ≤ {r['stretch_seconds']} s: {verdict[r['meets_stretch']]} |")
        lines.append("")
    inet = _load(out / "imagenet.json")
    if inet:
        lines += ["## ImageNet path (generated ImageFolder)", ""]
        for key, r in inet.items():
            if key.startswith("decode_"):
                lines.append(f"* decoding in {key[7:]}: {r['images_per_second']:.0f} images/s ({r['images']} images)")
        lines += [f"* one cigl step of {inet['train_step']['model']} at batch {inet['train_step']['batch_size']}: "
                  f"{inet['train_step']['seconds']:.2f} s", ""]
    pair = _load(out / "pair.json")
    if pair:
        lines += ["## gpu-short pair (rigl, cigl at 0.95, seed 0)", ""]
        if "skipped" in pair:
            lines.append(f"Skipped: {pair['skipped']}.")
        for r in pair.get("runs", []):
            lines.append(f"* {r['method']}: accuracy {float(r['accuracy']):.4f}, ECE {float(r['ece']):.4f}")
        if pair.get("grid_hours_extrapolated") is not None:
            lines.append(f"* the whole gpu-short grid ({pair['grid_cells']} runs) extrapolated: "
                         f"{pair['grid_hours_extrapolated']:.1f} h")
        lines.append("")
    return "\n".join(lines)


def _stage_items(result: dict):
    return ((k, v) for k, v in result.items() if not k.startswith("_"))


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.gpu_suite", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", required=True, help="folder for the stage JSON files and summary.md")
    p.add_argument("--stage", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--dry-run", action="store_true", help="every stage's code on CPU with tiny sizes")
    p.add_argument("--budget-s", type=float, default=480, help="seconds the pair stage may take (one call: 600)")
    args = p.parse_args(argv)
    if args.dry_run and "budget_s" in given_options(p, argv):
        p.error("--budget-s has no effect with --dry-run (the dry run's pair is tiny and always runs)")
    check_options(args)
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device here; use --dry-run to exercise the code paths on the CPU")
    sizes = DRY if args.dry_run else Sizes()
    out = Path(args.out)
    (out / "raw").mkdir(parents=True, exist_ok=True)
    for stage in args.stage:
        start = time.perf_counter()
        print(f"[gpu_suite] stage {stage} …", flush=True)
        if stage == "pair":
            result = stage_pair(sizes, out, args.dry_run, args.budget_s)
        else:
            result = {"env": stage_env, "step": stage_step, "epoch": stage_epoch,
                      "imagenet": stage_imagenet}[stage](sizes, out, args.dry_run)
        result = {**result, "_stage_seconds": time.perf_counter() - start, "_dry_run": args.dry_run}
        atomic_write_json(result, out / f"{stage}.json")
        print(f"[gpu_suite] stage {stage} done in {result['_stage_seconds']:.0f} s", flush=True)
    atomic_write_bytes(summary_markdown(out).encode(), out / "summary.md")
    print((out / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    run_cli(main)
