"""A study folder's runs: method names, run folders, and what the finished ones recorded.

A study is ``<results>/<study>/runs/<method>-<engine>-s<sparsity>-seed<seed>/`` (:func:`run_dir`).
A run is *finished* when its metrics.json says ``completed``; the tables read only those small
files (config.json, metrics.json), so a study accumulates across machines.  Used by
``experiments.sweep`` (which trains the runs) and ``experiments.study_tables`` (which reports them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cigl_bayes.config import METHODS, RESUME_FREE_FIELDS, TrainConfig

BASELINES = {"rigl+mixup": ("rigl", {"mixup": 0.2}), "rigl+ls": ("rigl", {"label_smoothing": 0.1})}
ABLATIONS = ["rigl", "cigl-no-rm", "cigl-no-wma", "cigl"]


def method_spec(name: str) -> tuple[str, dict]:
    """Sweep method name → (trainer method, extra config).

    ``<method>-keep<k>`` runs a random-mask method at keep probability k (e.g. ``cigl-keep0.99``,
    the official code's value; plain ``cigl`` uses the library default, unless the protocol pins
    it: cpu-study and cpu-smoke keep 0.9, see ``experiments.sweep.AT_KEEP_09``)."""
    if name in BASELINES:
        return BASELINES[name]
    if name in METHODS:
        return name, {}
    base, sep, keep = name.rpartition("-keep")
    if sep and base in METHODS and METHODS[base].random_mask:
        try:
            value = float(keep)
        except ValueError:
            value = float("nan")
        if not 0.0 < value <= 1.0:
            raise ValueError(f"bad keep in method {name!r}: expected <method>-keep<k> with k in (0, 1]")
        return base, {"random_mask_rate": round(1.0 - value, 12)}
    raise ValueError(f"unknown method {name!r}; known: {', '.join([*METHODS, *BASELINES])}, "
                     "or <random-mask method>-keep<k> (e.g. cigl-keep0.99)")


def run_dir(root: Path, method: str, sparsity: float, seed: int, engine: str) -> Path:
    return root / f"{method}-{engine}-s{sparsity:g}-seed{seed}"


TEST_KEYS = ("accuracy", "ece", "nll", "brier", "confidence")
VAL_KEYS = ("accuracy", "ece", "nll")
# summary columns: the test metrics, over-confidence (mean confidence − accuracy), the validation
# metrics (for choices such as keep: never the test set), and the last epoch's training NLL
SUMMARY_KEYS = (*TEST_KEYS, "overconfidence", *(f"val_{k}" for k in VAL_KEYS), "train_nll")


def rows_of(result: dict, method: str, engine: str, keep: float | None = None) -> list[dict]:
    """One row per reported predictor variant of a finished run: the method's output, and for
    rigl also its temperature-scaled output (``rigl+ts``).  Each row holds the test metrics,
    ``overconfidence`` = mean top-class confidence − accuracy (> 0: over-confident), the same
    predictor's validation metrics (``val_*``), the last epoch's mean training NLL
    (``train_nll``: how far the network fits its training data), the keep probability of Z and the
    BatchNorm protocol the predictor was scored under (``bn_protocol``; None for runs from before
    that record)."""
    out = result["output_predictor"]
    variants = [(method, out)]
    if method == "rigl" and "temperature_scaled" in result["test"]:
        variants.append(("rigl+ts", "temperature_scaled"))
    history = result.get("history") or [{}]
    rows = []
    for name, pred in variants:
        test = result["test"][pred]
        row = {"method": name, "engine": engine, "sparsity": result["sparsity_target"], "seed": result["seed"],
               "predictor": pred, "keep": keep, "bn_protocol": (result.get("bn_protocol") or {}).get(pred),
               **{k: test.get(k) for k in TEST_KEYS}}
        row["overconfidence"] = (test["confidence"] - test["accuracy"]) if "confidence" in test else None
        val = (result.get("val") or {}).get(pred, {})
        row.update({f"val_{k}": val.get(k) for k in VAL_KEYS})
        row["train_nll"] = history[-1].get("train_data_loss")
        rows.append(row)
    return rows


def finished_result(folder: Path, cfg: TrainConfig) -> dict | None:
    """The metrics of a run finished earlier — possibly on another machine, with only its small
    files (config.json, metrics.json) kept — or None.  A folder whose config differs is left to
    :func:`run`, which refuses it with a clear error."""
    try:
        result = json.loads((folder / "metrics.json").read_text())
        saved = TrainConfig.from_dict(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    mine = cfg.resolved(n_train=result.get("n_train"))
    same = all(getattr(saved, f) == getattr(mine, f) for f in mine.to_dict() if f not in RESUME_FREE_FIELDS)
    return result if result.get("completed") and same else None


RUN_NAME = re.compile(r"^(?P<method>.+)-(?P<engine>plain|svi)-s(?P<sparsity>[0-9.]+)-seed(?P<seed>\d+)$")


def check_precision(folder: Path, result: dict | None, dtype: str, amp: str) -> None:
    """Refuse a finished run whose matrix products ran (in any epoch, or in its evaluation) in
    another dtype than an explicit ``--amp`` asks for.  ``amp`` is resume-free (``--amp auto`` lets a
    study accumulate over machines with and without bf16), so without this check a bf16 study
    could silently count float32 runs.  ``dtype``: the parameters' dtype (what ``--amp off`` means)."""
    if result is None or amp == "auto":
        return
    wanted = "bfloat16" if amp == "bf16" else dtype
    ran = precision_of(folder, result)
    if ran != wanted:
        raise ValueError(f"run {folder.name} ran in {ran or 'a precision it did not record (--amp auto)'}, "
                         f"but --amp {amp} asks for {wanted}; give this precision its own --study, or use --amp auto")


def finished_runs(runs_root: Path, engine: str):
    """(folder, metrics) of every finished run of ``engine`` under ``runs_root``."""
    for folder in sorted(runs_root.glob("*")) if runs_root.is_dir() else []:
        match = RUN_NAME.match(folder.name)
        if not match or match["engine"] != engine:
            continue
        try:
            result = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        if result.get("completed"):
            yield folder, result


def check_one_engine(root: Path, engine: str) -> None:
    """Refuse a study that holds run folders (finished or not) of the other engine: its tables (runs.csv,
    table_*.md, paired.md, the plots) are written for one engine, so a sweep of the other would overwrite
    them with its runs alone.  Each engine gets its own ``--study``; ``experiments.compare_studies
    --engines plain svi`` pairs them by seed.  (Checked before training, outside the tables lock: two
    sweeps of different engines started at the same moment on an empty study both pass.)"""
    runs_root = root / "runs"
    folders = [(f.name, m["engine"]) for f in sorted(runs_root.iterdir() if runs_root.is_dir() else [])
               if (m := RUN_NAME.match(f.name))]
    others = [name for name, e in folders if e != engine]
    if not others:
        return
    other = next(e for name, e in folders if e != engine)
    shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    if any(e == engine for _, e in folders):
        raise ValueError(f"study {root} mixes engines: beside its {engine}-engine runs it holds {other}-engine "
                         f"folders ({shown}); move those to a study of their own (e.g. {root}-{other})")
    raise ValueError(f"study {root} holds {other}-engine runs ({shown}) and its tables are theirs; give --engine "
                     f"{engine} its own --study ({root.name}-{engine}) and pair the two with python -m "
                     f"experiments.compare_studies {root} {root}-{engine} --engines {other} {engine}")


def study_rows(runs_root: Path, engine: str) -> list[dict]:
    """Rows of every finished run of ``engine`` under ``runs_root`` (folder names from :func:`run_dir`),
    each with the dtype its matrix products ran in (``compute_dtype``, :func:`precision_of`)."""
    rows = []
    for folder, result in finished_runs(runs_root, engine):
        method = RUN_NAME.match(folder.name)["method"]
        precision = precision_of(folder, result)
        rows += [{**row, "compute_dtype": precision} for row in rows_of(result, method, engine, keep=_keep_of(folder))]
    return rows


def mixed_precision_note(study: str, recorded: set[str | None], here: str) -> str | None:
    """A one-line note when ``--amp auto`` would train this study's new runs in another precision
    (``here``) than its finished runs recorded: bf16 moves CigL's WMA beyond seed noise in the
    precision check of docs/performance.md, so a study mixing the two needs saying so before it trains."""
    others = sorted(p for p in recorded if p and p != here)
    if not others:
        return None
    amp = {"float32": "off", "bfloat16": "bf16"}.get(others[0]) if len(others) == 1 else None
    keep = (f"; to keep the study's {others[0]}, give --amp {amp} (refused where runs predate the precision "
            f"record: then train into a --study of its own and move the finished folders in)") if amp else ""
    return (f"note: finished runs of {study} ran in {', '.join(others)}, but --amp auto trains here in {here}, "
            f"so the study will mix precisions (runs.csv → compute_dtype; paired.md marks mixed pairs){keep}")


def precision_of(folder: Path, result: dict) -> str | None:
    """The dtype(s) a finished run's matrix products ran in, joined by "+" when they changed (a run
    resumed on a machine with another precision): from each epoch's ``compute_dtype`` in
    ``history`` and metrics.json → ``runtime`` (the evaluation).  Runs from before those records
    fall back to their config.json's explicit ``amp`` ("bf16" or "off"); None where only ``auto``
    is known, whose choice depended on the machine."""
    seen = {h["compute_dtype"] for h in result.get("history") or [] if h.get("compute_dtype")}
    if (result.get("runtime") or {}).get("compute_dtype"):
        seen.add(result["runtime"]["compute_dtype"])
    if seen:
        return "+".join(sorted(seen))
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return {"bf16": "bfloat16", "off": saved.get("dtype", "float32")}.get(saved.get("amp"))


def _keep_of(folder: Path) -> float | None:
    """Keep probability of Z of the run in ``folder`` (1 for methods without Z), from its config.json."""
    try:
        return TrainConfig.from_dict(json.loads((folder / "config.json").read_text())).keep
    except (OSError, ValueError, TypeError):
        return None


def family_of(name: str) -> str | None:
    """The trainer method a sweep method name trains (``cigl-keep0.99`` → ``cigl``), or None for a
    name that is read from another run, such as ``rigl+ts``."""
    try:
        return method_spec(name)[0]
    except ValueError:
        return None


