"""After training: every predictor of the method under every BatchNorm protocol, temperature
scaling, the weights file and the run folder.

Predictors (each gives test log-probabilities):
  final       the last weights M⊙W
  wma         the WMA mean of M⊙Z⊙W (CigL's output model)
  predictive  softmax averaged over the collected samples ("w/o WMA")
  mc-dropout  softmax averaged over S passes with dropout kept on (RigL + MC dropout)
  temperature_scaled  the method's output predictor with T fitted on the validation split

Each weight-setting predictor is evaluated under every BatchNorm protocol it has
(:data:`cigl_bayes.predict.BN_PROTOCOLS`: ``tracked`` for ``final`` only, ``recomputed-clean``,
``recomputed-augmented``) into ``metrics.json`` → ``by_bn_protocol``; the headline entries
(``test``, ``val``) use :func:`cigl_bayes.predict.default_bn_protocol`, recorded in ``bn_protocol``.
The same code evaluates a finished trainer and a committed weights file
(:func:`evaluate_weights`), so a re-evaluation equals the original evaluation.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from . import data as data_lib
from . import metrics
from .averaging import Snapshot
from .device import describe_host
from .predict import (
    bn_protocols_of,
    combine,
    default_bn_protocol,
    draws_log_probs,
    mc_dropout_log_probs,
    predict_log_probs,
    predictor_draws,
    weights_loaded,
)
from .runs import atomic_torch_save, atomic_write_json, atomic_write_npz
from .weights import WEIGHTS_FILE, RunWeights, save_run_weights


def _labels(loader) -> torch.Tensor:
    return torch.cat([y.cpu() for _, y in loader.epoch(0)])


def trainer_weights(trainer) -> RunWeights:
    """A trainer's weights as an evaluation reads them: M⊙W, M, the tracked buffers, the WMA mean,
    and the collected samples of a method that predicts with them."""
    net, method = trainer.net, trainer.method
    with torch.no_grad():
        final = Snapshot(net.effective_flat().detach().clone(), net.other_flat().detach().clone())
    samples = [Snapshot(s.sparse.to(trainer.device), s.other.to(trainer.device)) for s in trainer.samples] \
        if method.snapshots and len(trainer.samples) else []
    return RunWeights(final=final, mask=net.mask.flat.detach().clone(),
                      buffers={k: v.detach().clone() for k, v in net.module.named_buffers()},
                      wma=trainer.wma.mean() if method.wma and trainer.wma.count else None, samples=samples)


LogProbs = dict[str, dict[str, torch.Tensor]]  # {predictor: {split: log-probabilities}}


def weight_predictors(weights: RunWeights) -> list[str]:
    """The weight-setting predictors a run's weights hold: ``final``, ``wma`` (when there is a mean)
    and ``predictive`` (when there are samples)."""
    return ["final"] + (["wma"] if weights.wma is not None else []) + (["predictive"] if weights.samples else [])


def evaluate_weights(net, cfg, data, weights: RunWeights, loaders: dict, *, predictors=None,
                     protocols=None) -> dict[str, LogProbs]:
    """{protocol: {predictor: {split: log-probs}}} for every predictor of :func:`weight_predictors`
    (or those of ``predictors``), each under every protocol it has (or those of ``protocols``).
    ``net.module`` must hold the final θ and the tracked buffers (the ``tracked`` protocol reads them)."""
    names = [n for n in weight_predictors(weights) if predictors is None or n in predictors]
    out: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for name in names:
        # the protocol, not the draw's key, decides the BatchNorm statistics here
        draws = predictor_draws(name, weights.final, weights.samples, wma=weights.wma,
                                count=max(1, len(weights.samples)))
        for protocol in (p for p in bn_protocols_of(name) if p in data.bn_protocols
                         and (protocols is None or p in protocols)):
            per_split = draws_log_probs(net, draws, loaders, data.bn_loader(protocol), cfg.bn_batches, protocol)
            out.setdefault(protocol, {})[name] = {k: combine(name, v) for k, v in per_split.items()}
    return out


def headline(by_protocol: dict, cfg) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str]]:
    """The headline predictors ({predictor: {split: log-probs}}) and the protocol each one used."""
    chosen = {}
    for protocol, by_name in by_protocol.items():
        for name in by_name:
            if protocol == default_bn_protocol(name, cfg.final_bn_recomputed):
                chosen[name] = protocol
    return {name: by_protocol[protocol][name] for name, protocol in chosen.items()}, chosen


@torch.no_grad()
def validation_point(net, cfg, data, wma: Snapshot | None) -> dict:
    """Validation accuracy, NLL and ECE of the last weights (tracked BatchNorm statistics), and of
    the WMA mean so far (statistics recomputed on ``cfg.curve_bn_batches`` clean training batches):
    one point of the run's per-epoch curves (``history``)."""
    if data.val is None:
        return {}
    labels = _labels(data.val)
    point = {}
    last = metrics.calibration_metrics(predict_log_probs(net, data.val), labels, from_logits=True)
    point.update({f"val_{k}": last[k] for k in ("accuracy", "nll", "ece")})
    if wma is not None:
        with weights_loaded(net, wma, data.train_eval, cfg.curve_bn_batches):
            avg = metrics.calibration_metrics(predict_log_probs(net, data.val, wma.sparse), labels, from_logits=True)
        point.update({f"val_wma_{k}": avg[k] for k in ("accuracy", "nll", "ece")})
    return point


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


def _trainer_log_probs(trainer, weights: RunWeights, loaders: dict) -> tuple[dict, dict, dict]:
    """(headline {predictor: {split: log-probs}}, {predictor: protocol}, {protocol: {predictor: ...}})."""
    cfg = trainer.cfg
    by_protocol = evaluate_weights(trainer.net, cfg, trainer.data, weights, loaders)
    preds, used = headline(by_protocol, cfg)
    if trainer.method.activation_dropout:
        preds["mc-dropout"] = {k: mc_dropout_log_probs(trainer.net, ld, cfg.mc_samples, cfg.seed)
                               for k, ld in loaders.items()}
        used["mc-dropout"] = "tracked"
    return preds, used, by_protocol


def predictor_log_probs(trainer, loaders: dict) -> dict[str, dict[str, torch.Tensor]]:
    """{predictor: {split: log-probs}} of a trainer's headline predictors over ``loaders``: final,
    the method's wma / predictive and mc-dropout, each under its default BatchNorm protocol."""
    return _trainer_log_probs(trainer, trainer_weights(trainer), loaders)[0]


def score_by_protocol(by_protocol: dict, labels: dict) -> dict:
    """``by_bn_protocol`` of metrics.json: {protocol: {split: {predictor: metrics}, "reliability": bins}}."""
    out = {}
    for protocol, by_name in by_protocol.items():
        entry = {split: {name: metrics.calibration_metrics(by_split[split], labels[split], from_logits=True)
                         for name, by_split in by_name.items()} for split in labels}
        entry["reliability"] = {name: metrics.reliability_to_dict(
            metrics.reliability_data(by_split["test"], labels["test"], from_logits=True))
            for name, by_split in by_name.items()}
        out[protocol] = entry
    return out


def temperature_by_protocol(by_protocol: dict, labels: dict) -> dict:
    """``temperature_by_bn_protocol`` of metrics.json: {protocol: {predictor: {"temperature": T,
    "test": metrics}}}, every weight-setting predictor under every protocol with its own
    temperature.  T minimises the validation NLL of that predictor under that protocol (Guo et al.
    2017): the BatchNorm statistics change the logits, so each protocol needs its own T.  Only the
    validation split is fitted on; the test scores are of ``log_softmax(log p / T)``.  Empty
    without a validation split."""
    if "val" not in labels or not len(labels["val"]):
        return {}
    out: dict = {}
    for protocol, by_name in by_protocol.items():
        for name, by_split in by_name.items():
            temperature = metrics.fit_temperature(by_split["val"], labels["val"])
            scaled = torch.log_softmax(metrics.apply_temperature(by_split["test"], temperature), -1)
            out.setdefault(protocol, {})[name] = {
                "temperature": temperature,
                "test": metrics.calibration_metrics(scaled, labels["test"], from_logits=True)}
    return out


def evaluation_loaders(data) -> tuple[dict, dict]:
    """({split: loader}, {split: labels}) for the test and (when there is one) validation split."""
    loaders = {"test": data.test}
    if data.val is not None:
        loaders["val"] = data.val
    return loaders, {k: _labels(ld) for k, ld in loaders.items()}


MIN_TEMPERATURE_IMAGES = 100  # fewer validation images than this: the fitted temperature is warned about


class SmallValidationWarning(UserWarning):
    """Temperature scaling fitted on a validation split too small to trust."""


def with_temperature(preds: dict, used: dict, output: str, labels: dict, fit: bool) -> float | None:
    """Fit T on the validation split for the ``output`` predictor and add ``temperature_scaled`` to
    ``preds`` (and its protocol to ``used``); None when there is no validation split or ``fit`` is off."""
    if not fit or "val" not in labels:
        return None
    n_val = len(labels["val"])
    if n_val < MIN_TEMPERATURE_IMAGES:
        warnings.warn(f"the temperature is fitted on only {n_val} validation image{'s' * (n_val != 1)} (fewer than "
                      f"{MIN_TEMPERATURE_IMAGES}), so temperature_scaled is noisy; use a larger --subset or "
                      "--val-fraction, or --no-temperature-scaling", SmallValidationWarning, stacklevel=2)
    temperature = metrics.fit_temperature(preds[output]["val"], labels["val"])
    preds["temperature_scaled"] = {
        k: torch.log_softmax(metrics.apply_temperature(v, temperature), -1) for k, v in preds[output].items()}
    used["temperature_scaled"] = used[output]
    return temperature


def scores(preds: dict, labels: dict) -> dict[str, dict[str, dict]]:
    """{split: {predictor: metrics}} of the headline predictors."""
    return {split: {name: metrics.calibration_metrics(by_split[split], y, from_logits=True)
                    for name, by_split in preds.items()} for split, y in labels.items()}


def evaluate_and_write(trainer, train_seconds: float | None = None) -> dict:
    """Evaluate all predictors and write metrics.json, predictions.npz, reliability.png, model.pt
    and weights.safetensors."""
    cfg, out = trainer.cfg, trainer.out
    loaders, labels = evaluation_loaders(trainer.data)
    weights = trainer_weights(trainer)
    preds, used, by_protocol = _trainer_log_probs(trainer, weights, loaders)
    output = trainer.method.output if trainer.method.output in preds else "final"
    temperature = with_temperature(preds, used, output, labels, cfg.temperature_scaling)
    report = scores(preds, labels)
    save_run_weights(out / WEIGHTS_FILE, weights, cfg.to_dict(), trainer.net.sparse_names,
                     num_classes=trainer.data.num_classes)
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
        "test": report["test"],
        "val": report.get("val", {}),
        # the BatchNorm protocol of each headline entry above, and every predictor under every protocol
        "bn_protocol": used,
        "by_bn_protocol": score_by_protocol(by_protocol, labels),
        # each weight setting under each protocol with its own temperature, fitted on validation
        "temperature_by_bn_protocol": temperature_by_protocol(by_protocol, labels) if cfg.temperature_scaling else {},
        # in-time over-parameterisation: the fraction of sparse-layer weights ever active (CigL App. D.1)
        "itop_rate": trainer.net.mask.itop_rate,
        "weights_file": WEIGHTS_FILE,
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


def network_from_weights(weights_path, *, data_dir: str | None = None, device: str = "auto"):
    """(net, cfg, data, weights) of a committed weights file: the run's network rebuilt from the
    config stored in the file, holding the final weights M⊙W, θ and the tracked buffers, with the
    run's data (``data_dir`` overrides the recorded folder)."""
    import dataclasses

    from .device import resolve_device
    from .train import build_data
    from .weights import load_run_weights

    weights, meta = load_run_weights(weights_path)
    cfg = config_of_weights(weights_path, meta)
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=data_dir)
    dev = resolve_device(device)
    data = build_data(cfg, dev)
    net = network_of_weights(weights_path, weights, meta, cfg, dev, data.num_classes)
    return net, cfg, data, weights


def config_of_weights(weights_path, meta: dict):
    """The run's :class:`TrainConfig` stored in a weights file, or a one-line WeightsFileError."""
    from .config import TrainConfig
    from .weights import WeightsFileError

    stored = meta["config"]
    try:
        cfg = TrainConfig.from_dict(stored)
        cfg.method_config  # noqa: B018  (a method this code does not know raises KeyError here)
        return cfg
    except KeyError as err:  # a registry name this code does not know (method, model)
        raise WeightsFileError(f"{weights_path}: its stored config names {err.args[0]!r}, unknown to this "
                               "version of cigl-bayes") from None
    except (ValueError, TypeError) as err:
        raise WeightsFileError(f"{weights_path}: its stored config is not a valid run config ({err})") from None


def classes_of_weights(meta: dict, cfg) -> int:
    """The number of classes of the network a weights file holds: recorded in the file, or (files
    written before it was) that of the run's data set."""
    if meta.get("num_classes") is not None:
        return int(meta["num_classes"])
    return data_lib.num_classes(cfg.dataset)


def network_of_weights(weights_path, weights: RunWeights, meta: dict, cfg, device, num_classes: int):
    """The run's network (built as training built it) holding the file's final weights M⊙W, θ, its
    mask and tracked buffers, after every tensor of the file was checked against it: a file of
    another network is refused in one line naming the first tensor that does not fit."""
    from .train import build_network
    from .weights import WeightsFileError

    net = build_network(cfg, num_classes, device)
    if net.sparse_names != meta["sparse_names"] or sum(net.mask.numels) != weights.mask.numel():
        raise WeightsFileError(f"{weights_path} does not fit the network {cfg.model} builds here "
                               "(other sparse layers)")
    n_other = sum(p.numel() for p in net.other_params)
    settings = [("final", weights.final)] + ([("wma", weights.wma)] if weights.wma is not None else []) + \
        [(f"sample.{i:04d}", s) for i, s in enumerate(weights.samples)]
    for name, snap in settings:
        if snap.other.numel() != n_other:
            raise WeightsFileError(f"{weights_path}: {name}.other holds {snap.other.numel()} dense parameters, "
                                   f"{cfg.model} has {n_other}")
    buffers = dict(net.module.named_buffers())
    missing = sorted(set(buffers) - set(weights.buffers))
    if missing:
        raise WeightsFileError(f"{weights_path} lacks the buffer {missing[0]!r} of {cfg.model}")
    unknown = sorted(set(weights.buffers) - set(buffers))
    if unknown:
        raise WeightsFileError(f"{weights_path} holds a buffer {unknown[0]!r} that {cfg.model} does not have")
    for name, value in weights.buffers.items():
        if value.shape != buffers[name].shape:
            raise WeightsFileError(f"{weights_path}: buffer {name!r} has shape {tuple(value.shape)}, "
                                   f"{cfg.model} has {tuple(buffers[name].shape)}")

    def moved(snap: Snapshot) -> Snapshot:
        return Snapshot(snap.sparse.to(device, cfg.torch_dtype), snap.other.to(device, cfg.torch_dtype))

    weights.final = moved(weights.final)
    weights.wma = moved(weights.wma) if weights.wma is not None else None
    weights.samples = [moved(s) for s in weights.samples]
    with torch.no_grad():
        net.mask.flat.copy_(weights.mask.to(device))
        net.mask.float.copy_(net.mask.flat)
        net.load_flat_(weights.final.sparse, weights.final.other)
        for name, value in weights.buffers.items():
            buffers[name].copy_(value)
    return net


def reevaluate(weights_path, *, data_dir: str | None = None, device: str = "auto",
               test_fingerprint: str | None = None, predictors=None, protocols=None) -> dict:
    """Evaluate a committed weights file again, on any machine: the run's network is rebuilt from
    the config stored in the file (:func:`network_from_weights`) and every predictor scored under
    every BatchNorm protocol by the code that evaluated it first (:func:`evaluate_weights`).
    Returns ``test``, ``val``, ``bn_protocol``, ``by_bn_protocol``, ``temperature``, the test
    fingerprint and the runtime; training is not repeated.  ``test_fingerprint`` (the run's
    ``metrics.json`` → ``test_fingerprint``): test images found here with another fingerprint are
    refused before anything is scored.  ``predictors`` / ``protocols`` limit the work to those
    (each BatchNorm recomputation is a pass over the training images); a headline entry whose
    default protocol was left out is then absent, and so is ``temperature_scaled`` when the output
    predictor's is.  ``temperature_by_bn_protocol`` holds every evaluated setting with its own T."""
    from .device import resolve_device

    net, cfg, data, weights = network_from_weights(weights_path, data_dir=data_dir, device=device)
    found = data_lib.fingerprint(data.test)
    if test_fingerprint and found != test_fingerprint:
        raise ValueError(f"{weights_path}: the test set found here differs from the one the run was scored on "
                         f"(fingerprint {found} vs {test_fingerprint}); give the run's --data-dir")
    dev = resolve_device(device)
    loaders, labels = evaluation_loaders(data)
    by_protocol = evaluate_weights(net, cfg, data, weights, loaders, predictors=predictors, protocols=protocols)
    preds, used = headline(by_protocol, cfg)
    # the run's output predictor, as its evaluation chose it; one left out of a limited re-evaluation
    # (``predictors``, ``protocols``) is not scored, and has no temperature_scaled
    output = cfg.method_config.output if cfg.method_config.output in weight_predictors(weights) else "final"
    temperature = with_temperature(preds, used, output, labels, cfg.temperature_scaling) if output in preds else None
    report = scores(preds, labels)
    return {"method": cfg.method, "model": cfg.model, "seed": cfg.seed, "sparsity_target": cfg.sparsity,
            "output_predictor": output, "temperature": temperature, "test": report["test"],
            "val": report.get("val", {}), "bn_protocol": used, "by_bn_protocol": score_by_protocol(by_protocol, labels),
            "temperature_by_bn_protocol": temperature_by_protocol(by_protocol, labels)
            if cfg.temperature_scaling else {},
            "test_fingerprint": found,
            "runtime": {**describe_host(dev), "compute_dtype": cfg.compute_dtype(dev),
                        "channels_last": cfg.speed_options(dev)["channels_last"], "compile": cfg.compile}}
