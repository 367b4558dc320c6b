"""After training: every predictor of the method, temperature scaling, and the run folder.

Predictors (each gives test log-probabilities):
  final       the last weights M⊙W (training BatchNorm statistics; recomputed for CigL, whose
              statistics were tracked under M⊙Z⊙W: ``TrainConfig.final_bn_recomputed``)
  wma         the WMA mean of M⊙Z⊙W, BatchNorm statistics recomputed (CigL's output model)
  predictive  softmax averaged over the collected samples, BN recomputed for each ("w/o WMA")
  mc-dropout  softmax averaged over S passes with dropout kept on (RigL + MC dropout)
  temperature_scaled  the method's output predictor with T fitted on the validation split
"""

from __future__ import annotations

import numpy as np
import torch

from . import data as data_lib
from . import metrics
from .averaging import Snapshot
from .device import describe_host
from .predict import combine, draws_log_probs, mc_dropout_log_probs, predictor_draws, weights_loaded
from .runs import atomic_torch_save, atomic_write_json, atomic_write_npz


def _labels(loader) -> torch.Tensor:
    return torch.cat([y.cpu() for _, y in loader.epoch(0)])


def predictor_log_probs(trainer, loaders: dict) -> dict[str, dict[str, torch.Tensor]]:
    """{predictor: {split: log-probs}} for the splits in ``loaders`` (e.g. val, test): final, and the
    method's wma / predictive (weights from :func:`cigl_bayes.predict.predictor_draws`) and mc-dropout."""
    net, cfg, method = trainer.net, trainer.cfg, trainer.method
    with torch.no_grad():
        final = Snapshot(net.effective_flat().detach().clone(), net.other_flat().detach().clone())
    samples = [Snapshot(s.sparse.to(trainer.device), s.other.to(trainer.device)) for s in trainer.samples] \
        if method.snapshots and len(trainer.samples) else []
    names = ["final"]
    if method.wma and trainer.wma.count:
        names.append("wma")
    if samples:
        names.append("predictive")
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name in names:
        draws = predictor_draws(name, final, samples, wma=trainer.wma.mean() if name == "wma" else None,
                                count=max(1, len(samples)), final_bn_recomputed=cfg.final_bn_recomputed)
        per_split = draws_log_probs(net, draws, loaders, trainer.data.train_eval, cfg.bn_batches)
        out[name] = {k: combine(name, v) for k, v in per_split.items()}
    if method.activation_dropout:
        out["mc-dropout"] = {k: mc_dropout_log_probs(net, ld, cfg.mc_samples, cfg.seed) for k, ld in loaders.items()}
    return out


def output_state_dict(trainer) -> dict:
    """State dict of the method's output model (sparse zeros in place)."""
    net = trainer.net
    if trainer.method.wma and trainer.wma.count:
        with weights_loaded(net, trainer.wma.mean(), trainer.data.train_eval, trainer.cfg.bn_batches):
            return {k: v.detach().cpu().clone() for k, v in net.module.state_dict().items()}
    with torch.no_grad():
        net.apply_mask_()
    if trainer.cfg.final_bn_recomputed:  # the final weights with their own BatchNorm statistics, as ``final``
        final = Snapshot(net.effective_flat().detach().clone(), net.other_flat().detach().clone())
        with weights_loaded(net, final, trainer.data.train_eval, trainer.cfg.bn_batches):
            return {k: v.detach().cpu().clone() for k, v in net.module.state_dict().items()}
    return {k: v.detach().cpu().clone() for k, v in net.module.state_dict().items()}


def _sparsity_of(state: dict, names: list[str]) -> float:
    zeros = sum(int((state[n] == 0).sum()) for n in names)
    return zeros / max(1, sum(state[n].numel() for n in names))


def runtime_of(trainer) -> dict:
    """Host and resolved speed options of the trainer that evaluates the run, with
    ``compute_dtype`` (:attr:`Trainer.compute_dtype`): so ``--amp auto`` is recorded as what it chose."""
    return {**describe_host(trainer.device), "compute_dtype": trainer.compute_dtype,
            "channels_last": trainer.cfg.speed_options(trainer.device)["channels_last"],
            "compile": trainer.cfg.compile}


def reliability_title(method: str, model: str, sparsity: float) -> str:
    """The title of a run's reliability.png (shared with ``experiments.redraw_reliability``)."""
    return f"{method} · {model} · sparsity {sparsity}"


def evaluate_and_write(trainer, train_seconds: float | None = None) -> dict:
    """Evaluate all predictors and write metrics.json, predictions.npz, reliability.png, model.pt."""
    cfg, out = trainer.cfg, trainer.out
    loaders = {"test": trainer.data.test}
    if trainer.data.val is not None:
        loaders["val"] = trainer.data.val
    labels = {k: _labels(ld) for k, ld in loaders.items()}
    preds = predictor_log_probs(trainer, loaders)
    output = trainer.method.output if trainer.method.output in preds else "final"
    temperature = None
    if cfg.temperature_scaling and "val" in loaders:
        temperature = metrics.fit_temperature(preds[output]["val"], labels["val"])
        preds["temperature_scaled"] = {
            k: torch.log_softmax(metrics.apply_temperature(v, temperature), -1) for k, v in preds[output].items()}

    report = {name: {split: metrics.calibration_metrics(lp, labels[split], from_logits=True)
                     for split, lp in by_split.items()} for name, by_split in preds.items()}
    state = output_state_dict(trainer)
    atomic_torch_save(state, out / "model.pt")
    result = {
        "method": cfg.method,
        "engine": cfg.engine,
        "model": cfg.model,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "sparsity_target": cfg.sparsity if trainer.method.sparse else 0.0,
        "sparsity_actual": _sparsity_of(state, trainer.net.sparse_names),
        "output_predictor": output,
        # which BatchNorm statistics the `final` predictor used (TrainConfig.final_bn_recomputed)
        "final_bn": "recomputed" if cfg.final_bn_recomputed else "training",
        "temperature": temperature,
        "epochs": trainer.epoch,
        "steps": trainer.step,
        "n_train": trainer.data.train.num_samples,
        "n_val": trainer.data.val.num_samples if trainer.data.val is not None else 0,
        "n_test": trainer.data.test.num_samples,
        "test_fingerprint": data_lib.fingerprint(trainer.data.test),
        "train_fingerprint": data_lib.fingerprint(trainer.data.train_eval),
        "wma_samples": trainer.wma.count,
        "train_seconds": train_seconds,
        "test": {name: r["test"] for name, r in report.items()},
        "val": {name: r["val"] for name, r in report.items() if "val" in r},
        "history": trainer.history,
        # the machine and numerics that finished the run (a resumed run may have started elsewhere)
        "runtime": runtime_of(trainer),
        "completed": True,
    }
    diagrams = {name: metrics.reliability_data(by_split["test"], labels["test"], from_logits=True)
                for name, by_split in preds.items()}
    result["reliability"] = {"test": {name: metrics.reliability_to_dict(d) for name, d in diagrams.items()}}
    arrays = {"labels": labels["test"].numpy()}
    arrays.update({name: by_split["test"].exp().numpy().astype(np.float32) for name, by_split in preds.items()})
    atomic_write_npz(arrays, out / "predictions.npz")
    metrics.plot_reliability_diagram(diagrams, out / "reliability.png",
                                     title=reliability_title(cfg.method, cfg.model, cfg.sparsity))
    atomic_write_json(result, out / "metrics.json")
    return result
