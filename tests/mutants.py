"""The mutants of the mutation check (``python -m tests.mutation``, docs/testing.md): each one
deliberate deviation of CigL, the Pyro model/guide or the study tools, as an exact snippet of one
source file and its replacement, with the tests that must fail when it is applied.

Add a mutant for every new behaviour a test pins; run it alone with
``python -m tests.mutation --only NAME``.
"""

from __future__ import annotations

from dataclasses import dataclass

FIDELITY = "tests/test_cigl_fidelity.py"
MISUSE = "tests/test_drop_in_misuse.py::"


def fid(*names: str) -> tuple[str, ...]:
    return tuple(f"{FIDELITY}::{n}" for n in names)


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str  # the deviation, in words
    path: str  # file to change, relative to the repository
    old: str  # exact snippet (must occur once)
    new: str
    tests: tuple[str, ...]  # pytest node ids that must fail

    def __post_init__(self) -> None:
        if isinstance(self.tests, str) or not self.tests:  # a bare string would run one test per character
            raise TypeError(f"mutant {self.name}: tests must be a non-empty tuple of pytest node ids")


Z_FRESH = fid("test_z_is_drawn_fresh_every_step_and_enters_the_forward_pass")
ONLY_MZ = fid("test_only_the_m_and_z_entries_move_in_a_step")
WMA = fid("test_wma_is_the_mean_of_m_z_w_paired_with_each_epochs_last_z")
BN = fid("test_batchnorm_is_recomputed_for_the_averaged_weights")
REGROW = fid("test_regrowth_uses_the_dense_gradient_of_the_z_masked_loss")
REGROWN_ZERO = fid("test_a_just_dropped_and_regrown_weight_restarts_at_zero")
SCHEDULE = fid("test_mask_updates_every_delta_t_steps_until_three_quarters_of_training")
FLOOR = fid("test_drop_count_is_the_floor_of_fraction_times_nnz")
WD_ONCE = fid("test_weight_decay_is_counted_once")
DEFAULTS = fid("test_t_star_and_keep_defaults")
KEEP_DEFAULT = fid("test_t_star_and_keep_defaults", "test_a_default_cigl_trainer_draws_z_at_keep_099_and_records_it")
ERK = (f"{FIDELITY}::test_erk_per_layer_densities_match_an_independent_solver",)
MISUSE = "tests/test_drop_in_misuse.py::"
QUEUE_LAPLACE = ("tests/test_controlled_queue.py::"
                 "test_a_failed_laplace_baseline_is_logged_never_stops_training_and_is_retried",)
LAPLACE_SPLITS = ("tests/test_laplace.py::test_laplace_fits_on_training_data_and_tunes_on_validation_only",)
QUEUE = ("tests/test_controlled_queue.py::"
         "test_the_queue_trains_outside_the_checkout_and_commits_each_run_in_the_registered_order",)
GUIDE = fid("test_guide_log_density_has_the_u_level_and_scale_sigma",
            "test_guide_samples_have_the_hierarchical_moments")
SVI_SCORE = fid("test_svi_regrowth_score_at_positive_sigma_is_the_models_gradient_at_the_sampled_w",
                "test_svi_regrowth_score_at_sigma_zero_is_the_dense_gradient",
                "test_svi_regrowth_converges_to_the_sigma_zero_choice_as_sigma_falls")
ELBO = ("tests/test_elbo_equivalence.py",)
FINAL_BN = ("tests/test_posterior.py::test_cigl_final_gets_batchnorm_statistics_of_its_own_weights",
            "tests/test_posterior.py::test_which_methods_recompute_final_batchnorm")
FINAL_BN_MODEL = ("tests/test_posterior.py::"
                  "test_model_pt_of_cigl_without_wma_holds_the_final_weights_batchnorm_statistics",)

BNP = "tests/test_bn_protocols.py"
CS, CST = "experiments/controlled_study.py", "tests/test_controlled_study.py::"
QS = "experiments/controlled_queue.sh"
QUEUE_DIVERGED = ("tests/test_controlled_queue.py::test_a_diverged_run_is_committed_as_a_failure_and_never_retried",)
BN_PROTOCOL = (f"{BNP}::test_each_bn_protocol_uses_its_own_statistics",)
BN_HEADLINE = (f"{BNP}::test_metrics_json_records_every_protocol_and_each_headlines_own",)
WEIGHTS_ROUND_TRIP = (f"{BNP}::test_weights_file_round_trip_keeps_every_weight_setting",
                      f"{BNP}::test_weights_file_round_trip_with_wma")
ITOP = (f"{BNP}::test_itop_rate_counts_every_weight_that_was_ever_active",
        f"{BNP}::test_trainer_records_the_itop_rate_of_the_masks_it_went_through")
CURVES = (f"{BNP}::test_validation_curves_score_the_last_weights_and_the_wma_each_epoch",)
NO_TEST_FIT = (f"{BNP}::test_temperature_is_fitted_on_the_validation_split_only",)

MUTANTS: list[Mutant] = [
    # -- the random mask Z --------------------------------------------------------------------
    Mutant("no-z-in-forward", "the training forward pass uses M⊙W (no random mask Z)",
           "cigl_bayes/objectives.py", "w = self.net.effective_flat(z)", "w = self.net.effective_flat(None)",
           Z_FRESH),
    Mutant("z-once-per-run", "Z is drawn once for the whole run instead of every step",
           "cigl_bayes/cigl.py",
           "        self._z, self._z_drawn, self._scored, self._w = None, False, None, None\n        return update",
           "        self._scored = None\n        return update", Z_FRESH),
    Mutant("z-keep-inverted", "Z ~ Bernoulli(1 − keep): keeps 10% instead of 90%",
           "cigl_bayes/random_mask.py", "out.bernoulli_(check_keep(keep), generator=generator)",
           "out.bernoulli_(1 - check_keep(keep), generator=generator)", Z_FRESH),
    Mutant("keep-default-0.9", "CigL's default keep 0.9 (the paper's example) instead of 0.99",
           "cigl_bayes/config.py", 'output="wma", random_mask_rate=0.01)', 'output="wma", random_mask_rate=0.1)',
           KEEP_DEFAULT),
    Mutant("keep-default-not-recorded", "the method's default rate is not written into the resolved config",
           "cigl_bayes/config.py", "if self.random_mask_rate is None:  # recorded", "if False:  # recorded",
           KEEP_DEFAULT),
    Mutant("z-entries-move", "weights with Z = 0 are moved by momentum (no restore after the step)",
           "cigl_bayes/cigl.py", "freeze = z is not None and self.method.random_mask",
           "freeze = False and self.method.random_mask", ONLY_MZ),
    Mutant("z-entries-half-restored", "weights with Z = 0 are restored only in the first layer (zeroed elsewhere)",
           "cigl_bayes/cigl.py", "torch._foreach_addcmul_(params, before, self.net.mask.views(1.0 - z))",
           "torch._foreach_addcmul_(params[:1], before[:1], self.net.mask.views(1.0 - z)[:1])", ONLY_MZ),
    # -- WMA ----------------------------------------------------------------------------------
    Mutant("wma-without-z", "WMA averages M⊙W instead of M⊙Z⊙W",
           "cigl_bayes/cigl.py", "Snapshot(self.net.effective_flat(self.last_z)",
           "Snapshot(self.net.effective_flat(None)", WMA),
    Mutant("wma-fresh-z", "each WMA sample takes a fresh Z instead of the epoch's last one",
           "cigl_bayes/cigl.py", "Snapshot(self.net.effective_flat(self.last_z)",
           "Snapshot(self.net.effective_flat(self.z_source.sample(self.net.mask.float.dtype))", WMA),
    Mutant("wma-ema", "WMA is an exponential moving average (α = 0.5), not the arithmetic mean",
           "cigl_bayes/averaging.py", "self.sparse.add_(snap.sparse - self.sparse, alpha=1.0 / self.count)",
           "self.sparse.add_(snap.sparse - self.sparse, alpha=0.5)", WMA),
    Mutant("wma-from-after-t-star", "collection starts one epoch after T*",
           "cigl_bayes/cigl.py", "if self.epoch >= self.collect_from_epoch:",
           "if self.epoch > self.collect_from_epoch:", WMA),
    Mutant("t-star-half", "T* = 0.5·epochs instead of 0.8·epochs",
           "cigl_bayes/config.py", 'changes["wma_start_epoch"] = int(0.8 * self.epochs)',
           'changes["wma_start_epoch"] = int(0.5 * self.epochs)', DEFAULTS),
    Mutant("no-bn-recompute", "BatchNorm statistics are not recomputed for the averaged weights",
           "cigl_bayes/predict.py", "            recompute_batchnorm(net, bn_loader, snap.sparse, bn_batches)",
           "            pass", BN),
    Mutant("cigl-final-training-bn", "CigL's final predictor M⊙W keeps the BatchNorm statistics tracked under M⊙Z⊙W",
           "cigl_bayes/evaluate.py", "if protocol == default_bn_protocol(name, cfg.final_bn_recomputed):",
           "if protocol == default_bn_protocol(name, False):", FINAL_BN),
    Mutant("model-pt-final-training-bn", "model.pt of a CigL run without WMA keeps the training BatchNorm statistics",
           "cigl_bayes/evaluate.py", "    if trainer.cfg.final_bn_recomputed:  # the final weights",
           "    if False:  # the final weights", FINAL_BN_MODEL),
    Mutant("load-run-final-training-bn", "load_run's final predictor of a CigL run keeps the training statistics",
           "inference/run.py", "final_bn_recomputed=self.config.final_bn_recomputed)", "final_bn_recomputed=False)",
           ("tests/test_api.py::test_load_run_reproduces_the_trainers_predictions",)),
    Mutant("final-bn-rule-off", "no method's final predictor recomputes BatchNorm",
           "cigl_bayes/config.py", "return m.random_mask and not m.rescale_random_mask and self.keep < 1.0",
           "return False", FINAL_BN),
    Mutant("bn-loader-class-sorted",
           "BatchNorm is recomputed over the training split in its stored, class-sorted order",
           "cigl_bayes/train.py",
           "train_eval=data_lib.DeviceLoader(train, batch_size=eval_bs, shuffle=True, seed=cfg.seed, **common),",
           "train_eval=data_lib.DeviceLoader(train, batch_size=eval_bs, shuffle=False, **common),",
           ("tests/test_posterior.py::"
            "test_batchnorm_recomputation_batches_mix_the_classes_of_a_class_sorted_training_set",)),
    Mutant("bn-recompute-ema", "BatchNorm recomputed as a momentum-0.1 running average, not exact",
           "cigl_bayes/predict.py", "m.momentum = None  # cumulative moving average",
           "m.momentum = 0.1", BN),
    # -- RigL mask updates --------------------------------------------------------------------
    Mutant("regrow-masked-gradient", "regrowth scored by the masked gradient M⊙Z⊙∇ instead of the dense one",
           "cigl_bayes/train.py", "score = self.objective.regrowth_score() if scored else None",
           "score = self.objective.regrowth_score() * self.net.mask.float * z if scored else None", REGROW),
    Mutant("regrow-smallest", "regrowth picks the smallest |gradient|",
           "cigl_bayes/masks.py", "torch.where(old, -inf, grow_score)])", "torch.where(old, -inf, -grow_score)])",
           REGROW),
    Mutant("drop-largest", "the update drops the largest |w| instead of the smallest",
           "cigl_bayes/masks.py", "torch.where(old, -w.abs(), -inf)", "torch.where(old, w.abs(), -inf)", REGROW),
    Mutant("no-cosine-decay", "the drop fraction stays α (no cosine decay)",
           "cigl_bayes/masks.py",
           "return 0.5 * self.drop_fraction * (1.0 + math.cos(math.pi * min(step, self.end_step) / self.end_step))",
           "return self.drop_fraction", REGROW + SCHEDULE),
    Mutant("linear-decay", "the drop fraction decays linearly instead of by a cosine",
           "cigl_bayes/masks.py",
           "return 0.5 * self.drop_fraction * (1.0 + math.cos(math.pi * min(step, self.end_step) / self.end_step))",
           "return self.drop_fraction * (1.0 - min(step, self.end_step) / self.end_step)", REGROW),
    Mutant("drop-count-ceil", "the drop count is rounded up instead of down",
           "cigl_bayes/masks.py", "k = int(drop_fraction * nnz)", "k = math.ceil(drop_fraction * nnz)",
           FLOOR + REGROW),
    Mutant("updates-never-end", "mask updates go on after 75% of training",
           "cigl_bayes/masks.py", "return step % self.delta_t == 0 and 0 < step <= self.end_step",
           "return step % self.delta_t == 0 and 0 < step", SCHEDULE),
    Mutant("delta-t-off-by-one", "mask updates one step late (t ≡ 1 mod ΔT)",
           "cigl_bayes/masks.py", "return step % self.delta_t == 0 and 0 < step <= self.end_step",
           "return step % self.delta_t == 1 and 0 < step <= self.end_step", SCHEDULE + REGROW),
    Mutant("update-plus-sgd-step", "a mask-update step also takes the optimiser step",
           "cigl_bayes/cigl.py", "            self.update_mask(score, self.schedule.fraction(self.step_count + 1))",
           "            self.optimizer_step(z)\n"
           "            self.update_mask(score, self.schedule.fraction(self.step_count + 1))",
           REGROW),
    Mutant("regrown-not-zeroed", "regrown weights keep their old values",
           "cigl_bayes/cigl.py", "keep = self.net.mask.float * (~grown).to(self.net.mask.float.dtype)",
           "keep = self.net.mask.float", REGROWN_ZERO + REGROW),
    Mutant("dropped-regrown-kept", "a just-dropped-and-regrown weight is not zeroed (only new positions are)",
           "cigl_bayes/masks.py", "grown_here[picked] = True", "grown_here[picked] = ~old[picked]", REGROWN_ZERO),
    Mutant("z-momentum-frozen", "the momentum of Z = 0 weights is restored too (no zero-gradient step)",
           "cigl_bayes/cigl.py", "        (self._optimizer_step or self.optimizer.step)()\n        if freeze:",
           "        saved = [self.optimizer.state[p].get('momentum_buffer') for p in self.net.sparse_params]\n"
           "        saved = [None if b is None else b.clone() for b in saved]\n"
           "        (self._optimizer_step or self.optimizer.step)()\n"
           "        if freeze:\n"
           "            for p, b, zv in zip(self.net.sparse_params, saved, self.net.mask.views(z)):\n"
           "                if b is not None:\n"
           "                    self.optimizer.state[p]['momentum_buffer'].copy_(torch.where(zv != 0, "
           "self.optimizer.state[p]['momentum_buffer'], b))", ONLY_MZ),
    Mutant("dropped-not-regrowable", "a just-dropped weight cannot be regrown in the same update",
           "cigl_bayes/masks.py", "torch.ones_like(dropped, dtype=torch.bool)])",
           "torch.zeros_like(dropped, dtype=torch.bool)])",
           REGROWN_ZERO + REGROW),
    Mutant("dense-layers-updated", "layers ERK made dense are updated too (their smallest weights zeroed)",
           "cigl_bayes/masks.py", "if k == 0 or nnz == old.numel():", "if k == 0:", REGROW),
    Mutant("momentum-not-reset", "momentum of regrown and dropped weights is kept",
           "cigl_bayes/cigl.py", "            torch._foreach_mul_([b for b, _ in pairs], [v for _, v in pairs])",
           "            pass",
           REGROWN_ZERO + REGROW),
    # -- weight decay, ERK --------------------------------------------------------------------
    Mutant("wd-twice", "weight decay in the loss and again in the optimiser",
           "cigl_bayes/train.py", "nesterov=cfg.nesterov, weight_decay=0.0)",
           "nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)", WD_ONCE),
    Mutant("wd-not-on-theta", "weight decay skips the dense parameters θ",
           "cigl_bayes/objectives.py", "            if self.net.other_params:\n                l2 = l2 +",
           "            if False:\n                l2 = l2 +", WD_ONCE),
    Mutant("erk-plain-er", "Erdős–Rényi without kernel dimensions",
           "cigl_bayes/sparsity.py", "raw = [sum(s) / math.prod(s) for s in shapes]",
           "raw = [(s[0] + s[1]) / (s[0] * s[1]) for s in shapes]", ERK),
    Mutant("erk-squared", "ERK score squared",
           "cigl_bayes/sparsity.py", "raw = [sum(s) / math.prod(s) for s in shapes]",
           "raw = [(sum(s) / math.prod(s)) ** 2 for s in shapes]", ERK),
    Mutant("erk-no-dense-cap", "ERK densities may exceed 1 (no dense layers)",
           "cigl_bayes/sparsity.py", "if i not in dense and eps * raw[i] > 1.0]",
           "if i not in dense and eps * raw[i] > 1e9]", ERK),
    # -- the Pyro model and guide -------------------------------------------------------------
    Mutant("guide-without-u", "the guide has no U level at σ > 0 (W ~ N(M⊙Z⊙V, σ²))",
           "inference/guide.py", 'u = v if self.sigma == 0 else pyro.sample("U"', 'u = v if True else pyro.sample("U"',
           GUIDE),
    Mutant("guide-noise-2sigma", "the guide's noise scale is 2σ",
           "inference/guide.py", "return dist.Normal(loc, self.sigma).to_event(1)",
           "return dist.Normal(loc, 2 * self.sigma).to_event(1)", GUIDE),
    Mutant("guide-without-z", "the guide's W is centred on M⊙U (Z left out)",
           "inference/guide.py", 'w = pyro.sample("W", self._site(u * mz))',
           'w = pyro.sample("W", self._site(u * net.mask.float))', GUIDE),
    Mutant("svi-score-with-log-q", "SVI regrowth scored by ∂(−ELBO/N)/∂W, the guide's log q included",
           "inference/model.py", "            w = w.view_as(w)\n", "", SVI_SCORE),
    Mutant("svi-score-no-prior", "SVI regrowth score leaves out the prior's W/(s²N)",
           "inference/objective.py", "return tapped.grad + w / (self.model.prior_scale**2 * self.n_train)",
           "return tapped.grad", SVI_SCORE),
    Mutant("prior-scale-doubled-wd", "prior scale s = 1/√(2·wd·N) instead of 1/√(wd·N)",
           "inference/priors.py", "return 1.0 / math.sqrt(weight_decay * n_train)",
           "return 1.0 / math.sqrt(2 * weight_decay * n_train)", ELBO),
    Mutant("likelihood-not-scaled", "the likelihood plate is not scaled by N/B",
           "inference/model.py", 'pyro.plate("data", self.n_train, subsample=',
           'pyro.plate("data", x.shape[0], subsample=', ELBO),
    # -- arviz across machines: chains pooled from committed per-draw summaries ---------------
    Mutant("pooled-chains-all-first", "seeds pooled into arviz chains all hold the first seed's draws",
           "inference/diagnostics.py",
           "arr = np.stack([np.asarray(s[name], dtype=np.float64)[:n_draw] for s in summaries])",
           "arr = np.stack([np.asarray(summaries[0][name], dtype=np.float64)[:n_draw] for s in summaries])",
           ("tests/test_diagnostics.py::test_chains_summarised_apart_pool_to_the_joint_diagnostics",
            "tests/test_sweep.py::test_posterior_chains_pool_each_runs_own_draws_into_arviz_rhat")),
    Mutant("draw-test-nll-summed", "a draw's test NLL summed over the test points instead of averaged",
           "inference/diagnostics.py", '-idata.log_likelihood["y"].mean("test_point")',
           '-idata.log_likelihood["y"].sum("test_point")',
           ("tests/test_diagnostics.py::test_chain_summaries_hold_each_draws_test_nll_accuracy_and_norms",)),
    Mutant("sweep-chain-not-own", "a multi-run report credits all its entries (the first chain) to the run",
           "experiments/study_tables.py", 'yield match, [e for e in entries if e.get("run") == name]',
           "yield match, entries",
           ("tests/test_sweep.py::test_posterior_chains_pool_each_runs_own_draws_into_arviz_rhat",
            "tests/test_sweep.py::test_posterior_table_credits_each_run_with_its_own_rows_only")),
    Mutant("training-curve-other-seed", "the training-NLL difference subtracts RigL's first seed, not the same seed",
           "experiments/study_plots.py", 'rigl = nll.get(("rigl", s, seed, epoch))',
           'rigl = nll.get(("rigl", s, 0, epoch))',
           ("tests/test_sweep.py::test_training_curves_pair_each_method_with_rigl_of_the_same_seed",)),
    Mutant("compare-pairs-other-seed", "compare_studies pairs each run of A with B's run of another seed",
           "experiments/compare_studies.py", "b = b_index.get(tuple(a[k] for k in PAIR_KEY))",
           "b = b_index.get(tuple(a[k] if k != \"seed\" else (a[k] + 1) % 3 for k in PAIR_KEY))",
           ("tests/test_compare_studies.py::test_runs_are_paired_by_seed_and_judged_against_the_seed_noise_of_a",)),
    Mutant("compare-noise-of-b", "the seed-noise yardstick is taken from the pairs' differences, not A's seeds",
           "experiments/compare_studies.py", "noise = _std(seed_values)",
           "noise = _std(deltas)",
           ("tests/test_compare_studies.py::test_a_shift_larger_than_the_seed_noise_is_named",)),
    Mutant("runtime-ignores-autocast", "runs record the parameters' dtype even when bf16 autocast ran",
           "cigl_bayes/train.py", "return str(self.net.autocast_dtype or self.cfg.torch_dtype)",
           "return str(self.cfg.torch_dtype)",
           ("tests/test_speed_options.py::test_runs_record_the_precision_their_products_ran_in",)),
    Mutant("one-seed-shows-zero-spread", "a single seed is shown as mean ± 0.00, as if it had no seed noise",
           "experiments/study_tables.py", "    if n < 2:", "    if False:",
           ("tests/test_sweep.py::test_tables_show_no_spread_for_one_seed_and_flag_unequal_seed_sets",)),
    Mutant("unequal-seeds-unmarked", "a method with fewer seeds than RigL is compared with it unmarked",
           "experiments/study_tables.py", "if e is not None and e[\"seeds\"] < most:", "if False:",
           ("tests/test_sweep.py::test_tables_show_no_spread_for_one_seed_and_flag_unequal_seed_sets",)),
    Mutant("amp-precision-unchecked", "an explicit --amp reuses finished runs of another precision",
           "experiments/study_runs.py", "    if result is None or amp == \"auto\":\n        return\n",
           "    return\n",
           ("tests/test_sweep.py::test_an_explicit_amp_refuses_finished_runs_of_another_precision",)),
    Mutant("load-run-ignores-amp", "load_run evaluates in the run's own precision whatever amp asks for",
           "inference/run.py", "amp=amp or cfg.amp)", "amp=cfg.amp)",
           ("tests/test_api.py::test_load_run_evaluates_in_the_precision_asked_for",)),
    Mutant("paired-interval-normal-quantile", "the paired interval uses the normal 1.96 instead of Student's t "
           "with n − 1 degrees of freedom (far too narrow for 2–3 seeds)",
           "experiments/study_tables.py", "stats.t.ppf(0.975, len(values) - 1)", "1.96",
           ("tests/test_sweep.py::test_paired_summary_gives_mean_std_and_the_paired_t_interval_over_seeds",)),
    Mutant("paired-bar-counts-any-gain", "every seed with a lower ECE counts as passing the paper's −15% bar",
           "experiments/study_tables.py", "np.sum(rel[ok] <= criterion)", "np.sum(rel[ok] < 0)",
           ("tests/test_sweep.py::test_paired_summary_gives_mean_std_and_the_paired_t_interval_over_seeds",)),
    Mutant("paired-ratio-nan", "a seed whose RigL ECE is 0 turns the mean relative ECE change into nan",
           "experiments/study_tables.py", "rel[ok].mean()", "rel.mean()",
           ("tests/test_sweep.py::test_paired_summary_leaves_a_zero_rigl_ece_out_of_the_ratios",)),
    Mutant("sweep-busy-run-aborts", "a run another sweep is training stops this sweep (exit 2), not skipped",
           "experiments/sweep.py", "except RunFolderBusy as busy:  # another sweep of this study is training it",
           "except ZeroDivisionError as busy:  # another sweep of this study is training it",
           ("tests/test_sweep.py::test_two_sweeps_of_one_study_split_its_grid",)),
    Mutant("tables-lock-noop", "sweeps sharing a study rebuild its tables at the same time, interleaved",
           "experiments/sweep.py", "        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed",
           "        pass",
           ("tests/test_sweep.py::test_table_rebuilds_of_one_study_wait_for_each_other",)),
    Mutant("posterior-done-by-first-file", "a report killed after its first file counts as finished",
           "experiments/sweep.py", 'if (out / "report.md").is_file():', 'if (out / "predictors.json").is_file():',
           ("tests/test_sweep.py::test_two_sweeps_of_one_study_split_its_grid",)),
    Mutant("posterior-report-unlocked", "a posterior report takes no lock on its folder: two writers at once",
           "experiments/posterior_report.py", "with RunFolderLock(out):  # one writer per report folder",
           "with RunFolderLock(out.parent):  # one writer per report folder",
           ("tests/test_sweep.py::test_two_sweeps_of_one_study_split_its_grid",)),
    Mutant("posterior-report-leaves-empty-folder", "a refused posterior report leaves an empty report folder",
           "experiments/posterior_report.py", "        if created:  # refused or failed",
           "        if False:  # refused or failed",
           ("tests/test_posterior.py::test_posterior_report_refuses_missing_and_unfinished_runs",)),
    Mutant("paired-precision-unmarked", "a pair of runs trained in two precisions reads as an ordinary pair",
           "experiments/study_tables.py", '    known_apart = "unrecorded" not in (ours, theirs) and ours != theirs',
           "    known_apart = False",
           ("tests/test_sweep.py::test_paired_differences_mark_a_pair_trained_in_two_precisions",)),
    Mutant("mixed-precision-silent", "--amp auto mixes a new precision into a study without a word",
           "experiments/study_runs.py", "    others = sorted(p for p in recorded if p and p != here)",
           "    others = []",
           ("tests/test_sweep.py::test_a_sweep_says_when_amp_auto_would_mix_precisions_into_a_study",)),
    Mutant("mixed-precision-note-unwired", "the sweep never asks whether --amp auto would mix precisions",
           "experiments/sweep.py", '    if args.amp == "auto" and unfinished:', "    if False and unfinished:",
           ("tests/test_sweep.py::test_a_sweep_says_when_amp_auto_would_mix_precisions_into_a_study",)),
    Mutant("export-bn-in-run-precision", "a bf16 run is exported with BatchNorm statistics recomputed in bf16",
           "experiments/export.py", 'device=args.device, amp="off")', "device=args.device)",
           ("tests/test_export.py::test_export_cli_round_trips_a_tiny_run",)),
    Mutant("study-keep-unpinned", "the study protocols no longer pin cigl (and the Z ablation and baseline) to keep "
           "0.9, so the library's default keep 0.99 silently changes their committed cells",
           "experiments/sweep.py", 'AT_KEEP_09 = {name: {"random_mask_rate": 0.1} for name, spec in METHODS.items() '
           'if spec.random_mask}', "AT_KEEP_09 = {}",
           ("tests/test_sweep.py::test_the_committed_study_runs_still_count_as_finished_under_the_protocol",)),
    Mutant("sweep-mixes-engines", "a sweep of the other engine writes its tables over a study's (no engine check)",
           "experiments/sweep.py", "    check_one_engine(root, args.engine)\n", "",
           ("tests/test_sweep.py::test_a_study_keeps_one_engine_so_a_sweep_of_the_other_cannot_overwrite_its_tables",)),
    Mutant("compare-engines-ignored", "compare_studies --engines pairs nothing across engines (the option is parsed, "
           "not applied)", "experiments/compare_studies.py",
           "        a_rows, b_rows = across_engines(a_rows, b_rows, *args.engines)\n", "        pass\n",
           ("tests/test_compare_studies.py::test_engines_can_be_the_compared_setting",)),
    Mutant("reliability-panel-one-seed", "a pooled reliability panel keeps only the first seed of its cell",
           "experiments/study_plots.py", '        parts.append(bins)\n        seeds.append(r["seed"])\n',
           '        parts.append(bins)\n        seeds.append(r["seed"])\n        break\n',
           ("tests/test_sweep.py::test_dense_vs_sparse_reliability_is_pooled_from_the_committed_small_files",
            "tests/test_sweep.py::test_rigl_vs_cigl_reliability_is_pooled_from_the_committed_small_files")),
    Mutant("dense-vs-sparse-needs-predictions", "Fig. 1a–b reads predictions.npz only, so runs finished on another "
           "machine (small files only) fall out", "experiments/study_plots.py",
           "        bins = reliability_bins(run_dir(runs_root, method, sparsity, r[\"seed\"], engine))\n",
           "        folder = run_dir(runs_root, method, sparsity, r[\"seed\"], engine)\n"
           "        bins = reliability_bins(folder) if (folder / \"predictions.npz\").exists() else None\n",
           ("tests/test_sweep.py::test_dense_vs_sparse_reliability_is_pooled_from_the_committed_small_files",)),
    Mutant("reliability-legend-from-bars", "the reliability legend takes its swatches from the bars, so a category "
           "with no bin (never under-confident) is shown in matplotlib's fallback colour", "cigl_bayes/metrics.py",
           '    ax.legend(handles=handles, loc="upper left", fontsize="x-small")\n',
           '    for h, bars in zip(handles[1:], ax.containers):\n        bars.set_label(h.get_label())\n'
           '    ax.get_lines()[0].set_label(handles[0].get_label())\n'
           '    ax.legend(loc="upper left", fontsize="x-small")\n',
           ("tests/test_metrics.py::test_plot_legend_names_each_colour_even_when_a_category_has_no_bin",)),
    # -- the controlled study's instruments (issue #39) ----------------------------------------
    Mutant("bn-augmented-reads-clean", "the recomputed-augmented protocol recomputes on the clean images",
           "cigl_bayes/train.py", "            return self.train_bn_augmented\n",
           "            return self.train_eval\n", BN_PROTOCOL),
    Mutant("bn-final-not-tracked", "the final weights are never scored with their tracked statistics",
           "cigl_bayes/predict.py", 'return BN_PROTOCOLS if name == "final" else BN_PROTOCOLS[1:]',
           "return BN_PROTOCOLS[1:]", BN_PROTOCOL),
    Mutant("bn-headline-protocol", "the headline entry of RigL's final uses recomputed statistics, not tracked ones",
           "cigl_bayes/predict.py", "    if name == \"final\" and not final_bn_recomputed:\n        return TRACKED",
           "    if False:\n        return TRACKED", BN_HEADLINE),
    Mutant("weights-file-no-buffers", "the weights file leaves out the tracked BatchNorm buffers",
           "cigl_bayes/weights.py", 'tensors.update({f"buffer.{k}": v.detach().cpu().contiguous() for k, v in '
           'weights.buffers.items()})', "pass", WEIGHTS_ROUND_TRIP),
    Mutant("weights-file-wma-is-final", "the weights file stores the final weights as the WMA mean",
           "cigl_bayes/weights.py", 'tensors.update(_pack("wma", weights.wma.sparse, weights.wma.sparse != 0, '
           'weights.wma.other))', 'tensors.update(_pack("wma", weights.final.sparse, weights.final.sparse != 0, '
           'weights.final.other))', WEIGHTS_ROUND_TRIP),
    Mutant("itop-not-accumulated", "the ITOP union is not updated by mask updates (rate = density)",
           "cigl_bayes/masks.py", "        self.ever_active |= new_flat\n", "", ITOP),
    Mutant("val-curve-wma-no-bn", "the per-epoch WMA validation point keeps the last weights' BatchNorm statistics",
           "cigl_bayes/evaluate.py", "with weights_loaded(net, wma, data.train_eval, cfg.curve_bn_batches):",
           "with weights_loaded(net, wma):", CURVES),
    # -- the drop-in object (issue #40) ---------------------------------------------------------
    Mutant("drop-in-score-not-all-reduced", "under torch.distributed each rank regrows by its own score",
           "cigl_bayes/cigl.py", "        if info.active:\n            all_reduce_mean_([score], 1, info)",
           "        if False:\n            all_reduce_mean_([score], 1, info)",
           ("tests/test_distributed.py::test_ddp_ranks_keep_the_same_mask_and_weights_with_the_drop_in_object",)),
    Mutant("drop-in-adam-state-kept", "on regrowth only SGD's momentum buffer is zeroed, not Adam's moments",
           "cigl_bayes/cigl.py", "for buf in state[p].values() if torch.is_tensor(buf) and buf.shape == p.shape]",
           "for k, buf in state[p].items() if k == 'momentum_buffer']",
           ("tests/test_drop_in.py::test_adamw_trains_a_user_model_and_its_moments_restart_at_zero_for_regrown_weights",)),
    Mutant("drop-in-forward-without-z", "the attached forward computes with M⊙W (Z never reaches the user's model)",
           "cigl_bayes/cigl.py", "cigl.net.mask.views(cigl.training_weights())))",
           "cigl.net.mask.views(cigl.net.effective_flat(None))))",
           ("tests/test_drop_in.py::test_the_forward_pass_sees_m_z_w_in_training_and_m_w_in_eval",
            "tests/test_drop_in.py::test_a_user_loop_follows_the_trainers_trajectory")),
    Mutant("lightning-resume-masks-again", "resuming from a Lightning checkpoint masks the restored weights with "
           "a fresh initial M before the saved state is checked (a refused resume zeroes them)",
           "cigl_bayes/lightning.py", "apply_mask=self._pending_state is None,", "apply_mask=True,",
           ("tests/test_lightning.py::test_a_refused_lightning_resume_leaves_the_checkpoint_weights_untouched",)),
    Mutant("lightning-resume-ignores-state", "resuming from a Lightning checkpoint leaves CigL's saved state "
           "(M, Z stream, WMA) unloaded", "cigl_bayes/lightning.py",
           "            self.cigl.load_state_dict(self._pending_state)\n", "            pass\n",
           ("tests/test_lightning.py::test_a_lightning_checkpoint_resumes_with_its_own_weights_and_mask",
            "tests/test_lightning.py::test_a_resumed_fit_ends_exactly_where_an_uninterrupted_one_does")),
    Mutant("drop-in-resume-z-stream-fresh", "a resumed CigL draws Z from a fresh stream, not the saved one",
           "cigl_bayes/cigl.py", '        self.z_source.load_state_dict(state["z_source"])\n', "",
           ("tests/test_lightning.py::test_a_resumed_fit_ends_exactly_where_an_uninterrupted_one_does",)),
    Mutant("drop-in-resume-wma-lost", "a resumed CigL restarts its weight average from nothing",
           "cigl_bayes/cigl.py", '        self.wma.load_state_dict(state["wma"], self.net.sparse_params[0].device)\n',
           "", ("tests/test_lightning.py::test_a_resumed_fit_ends_exactly_where_an_uninterrupted_one_does",)),
    Mutant("temperature-on-test", "temperature scaling is fitted on the test split",
           "cigl_bayes/evaluate.py", 'temperature = metrics.fit_temperature(preds[output]["val"], labels["val"])',
           'temperature = metrics.fit_temperature(preds[output]["test"], labels["test"])', NO_TEST_FIT),
    Mutant("laplace-prior-on-test", "the Laplace prior precision is chosen on the test split",
           "inference/laplace.py", 'val_loader=LoaderView(*features["val"], batch)',
           'val_loader=LoaderView(*features["test"], batch)', LAPLACE_SPLITS),
    Mutant("laplace-running-metric", "the Laplace grid search scores each prior precision with laplace-torch's "
           "default running NLL, never reset between grid points", "inference/laplace.py",
           "link_approx=link_approx, loss=validation_nll)", "link_approx=link_approx)",
           ("tests/test_laplace.py::"
            "test_the_prior_precision_is_the_grids_lowest_validation_nll_for_an_overconfident_head",)),
    Mutant("laplace-hessian-on-val", "the Laplace Hessian is fitted on the validation split, not the training data",
           "inference/laplace.py", "la.fit(LoaderView(*last_layer_inputs(module, head, train), batch))",
           'la.fit(LoaderView(*features["val"], batch))', LAPLACE_SPLITS),
    Mutant("laplace-features-train-mode", "the stored last-layer features are computed in training mode "
           "(batch statistics), not with the network's BatchNorm statistics",
           "inference/laplace.py", "module = copy.deepcopy(module).eval()", "module = copy.deepcopy(module).train()",
           ("tests/test_laplace.py::test_laplace_on_stored_features_equals_laplace_torch_on_the_whole_network",)),
    Mutant("upward-import", "a cigl_bayes module imports the inference layer above it (relative, function-level, "
           "through the installed name cigl_bayes.inference)",
           "cigl_bayes/weights.py", "from .runs import atomic_write_via\n",
           "from .runs import atomic_write_via\n\n\ndef _upward():\n    from .inference import swag  # noqa: F401\n",
           ("tests/test_architecture.py::test_no_module_imports_a_package_above_its_own",)),
    Mutant("quick-overrides-explicit", "a benchmark's --quick preset replaces options the user gave explicitly",
           "benchmarks/common.py", "        if dest not in given:\n", "        if True:\n",
           ("tests/test_benchmarks.py::test_quick_keeps_the_options_given_explicitly",
            "tests/test_benchmarks.py::test_given_options_sees_abbreviations_and_equals_forms")),
    Mutant("compare-ignores-other-settings", "compare_studies pairs runs that also differ in epochs without a word",
           "experiments/compare_studies.py", "    if differing:\n", "    if False:\n",
           ("tests/test_compare_studies.py::test_studies_that_also_differ_in_epochs_are_warned_about",)),
    Mutant("report-analyses-before-test-check", "posterior_report analyses every run before it sees that their "
           "test sets differ", "experiments/posterior_report.py",
           "    check_same_test_set_before_analysis(args.runs)\n", "",
           ("tests/test_run_integrity.py::test_posterior_report_refuses_other_test_sets_before_analysing_and_names_why",)),
    Mutant("stored-bn-ignored", "a loaded run recomputes the output model's BatchNorm from data though model.pt "
           "holds it", "inference/run.py",
           "        elif key in self._stored_bn and self.bn_batches == self.config.bn_batches:\n",
           "        elif False:\n",
           ("tests/test_api.py::test_the_output_model_predicts_without_data_from_the_statistics_model_pt_stores",)),
    Mutant("stored-bn-always", "model.pt's BatchNorm statistics stand in for a recomputation over other batches",
           "inference/run.py",
           "        elif key in self._stored_bn and self.bn_batches == self.config.bn_batches:\n",
           "        elif key in self._stored_bn:\n",
           ("tests/test_api.py::test_the_output_model_predicts_without_data_from_the_statistics_model_pt_stores",)),
    Mutant("temperature-not-applied", "predict's temperature_scaled is the output predictor at T = 1",
           "inference/run.py", "apply_temperature(base.probs.clamp_min(1e-12).log(), temperature)",
           "apply_temperature(base.probs.clamp_min(1e-12).log(), 1.0)",
           ("tests/test_api.py::test_temperature_scaled_is_the_output_predictor_at_the_fitted_temperature",)),
    Mutant("queue-copies-untracked", "the controlled queue seeds its work folder with every file of the checkout, so a "
           "stale checkpoint there overwrites the unfinished run's newer one", "experiments/controlled_queue.sh",
           '(cd "$committed" && git ls-files -z -- controlled | xargs -0 --no-run-if-empty cp -a --parents -t "$work")',
           'cp -a "$committed/controlled/." "$work/controlled/"', QUEUE),
    Mutant("queue-copies-registered-back", "the queue copies the work folder's stale registered analysis back over "
           "the checkout's", "experiments/controlled_queue.sh",
           'if [ -f "$file" ] && [[ ! " ${not_the_sweeps[*]} " == *" $name "* ]]; then', 'if [ -f "$file" ]; then',
           QUEUE),
    Mutant("queue-laplace-not-retried", "a rigl run committed without its Laplace baseline (a session ended, or the "
           "baseline failed) never gets one", "experiments/controlled_queue.sh",
           'evaluate_after "$method" "$run"  # an earlier session', ':  # an earlier session', QUEUE_LAPLACE),
    Mutant("queue-laplace-failure-stops", "a failed Laplace baseline stops the queue's training",
           "experiments/controlled_queue.sh", 'failed; the next start retries it" >&2\n',
           'failed; the next start retries it" >&2\n      exit 1\n', QUEUE_LAPLACE),
    Mutant("compare-interval-normal", "compare_studies' paired interval uses the normal 1.96 instead of Student's t "
           "with n − 1 degrees of freedom", "experiments/compare_studies.py",
           "    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)\n",
           "    half = 1.96 * sd / math.sqrt(n)\n",
           ("tests/test_compare_studies.py::test_runs_are_paired_by_seed_and_judged_against_the_seed_noise_of_a",)),
    # the drop-in object under a user's plausible mistakes (new-user trial, 2026-12-05)
    Mutant("drop-in-step-without-forward", "cigl.step() after a forward that bypassed the attached module steps "
           "the optimizer on the dense gradient (the network trains dense)", "cigl_bayes/cigl.py",
           "        if self._attached and self._w is None:\n", "        if False:\n",
           (f"{MISUSE}test_a_step_without_the_attached_forward_is_refused_before_anything_moves",)),
    Mutant("drop-in-resume-keeps-construction-zeros", "a load_state_dict right after construction leaves the "
           "weights that construction's initial M zeroed at 0", "cigl_bayes/cigl.py",
           "if self._before_mask is not None and self._untouched_since_construction():", "if False:",
           (f"{MISUSE}test_resuming_in_the_usual_pytorch_order_is_exact",
            "tests/test_lightning.py::test_a_lightning_checkpoint_resumes_with_its_own_weights_and_mask")),
    Mutant("drop-in-resume-overwrites-loaded-module", "a load_state_dict puts construction-time weights back over "
           "a module the host loaded after construction", "cigl_bayes/cigl.py",
           "if self._before_mask is not None and self._untouched_since_construction():",
           "if self._before_mask is not None:",
           ("tests/test_drop_in.py::test_state_dict_resumes_bit_identically",)),
    Mutant("drop-in-state-shared", "CigL.state_dict hands out its live tensors", "cigl_bayes/cigl.py",
           "        return _copied(state)\n", "        return state\n",
           (f"{MISUSE}test_state_dict_is_a_copy_both_ways",)),
    Mutant("drop-in-keep-ignored", "keep is accepted and ignored for a method without Z", "cigl_bayes/settings.py",
           "            if keep is not None and keep != 1:\n", "            if False:\n",
           (f"{MISUSE}test_keep_and_sparsity_are_checked_for_every_method",)),
    Mutant("drop-in-mcdp-without-dropout", "rigl-mcdp on a module without dropout layers runs as plain RigL",
           "cigl_bayes/cigl.py", "        if self.method.activation_dropout and not any(",
           "        if False and not any(", (f"{MISUSE}test_rigl_mcdp_needs_dropout_layers_in_the_users_module",)),
    Mutant("drop-in-other-sparsity-loaded", "a saved mask of another sparsity loads into a CigL built for this one",
           "cigl_bayes/cigl.py", "        if saved_nnz != list(self.net.mask.nnz):\n", "        if False:\n",
           (f"{MISUSE}test_a_state_of_another_sparsity_or_no_state_is_refused",)),
    Mutant("bn-empty-loader-silent", "an empty BatchNorm loader leaves statistics reset to mean 0, variance 1",
           "cigl_bayes/predict.py", "    if not seen:  # reset", "    if False:  # reset",
           (f"{MISUSE}test_averaging_a_model_without_batchnorm_needs_no_loader_and_an_empty_loader_is_refused",)),
    Mutant("lightning-scheduler-warns", "with an LR scheduler, the callback's step makes torch warn that "
           "optimizer.step was overridden", "cigl_bayes/lightning.py",
           "            step._wrapped_by_lr_sched = True", "            pass",
           ("tests/test_lightning.py::test_an_lr_scheduler_beside_the_callback_raises_no_warning",)),
    # bad input named, not misread (the same trial)
    Mutant("cli-no-flag-help-inverted", "a --no-… flag's help describes the setting it turns off as if it turned "
           "it on", "experiments/cli.py", "if field.default:  # a --no-", "if False:  # a --no-",
           ("tests/test_cli.py::test_every_no_flag_says_what_it_turns_off",)),
    Mutant("export-unrebuildable-name", "export_network writes a file under a model name load_exported cannot "
           "rebuild", "cigl_bayes/export.py", "_check_rebuildable(folded.state_dict(), model, len(classes), options)",
           "pass",
           ("tests/test_export.py::test_export_refuses_a_model_name_load_exported_cannot_rebuild",)),
    Mutant("export-shapes-unchecked", "export_network accepts a module whose parameters differ from the named "
           "architecture's", "cigl_bayes/export.py", "if shapes != expected:", "if False:",
           ("tests/test_export.py::test_export_refuses_a_model_name_load_exported_cannot_rebuild",)),
    Mutant("temperature-missing-metrics-misnamed", "a run without metrics.json is said to have been trained "
           "without temperature scaling", "inference/run.py", "if stored is None:", "if stored is None and False:",
           ("tests/test_api.py::test_temperature_scaled_without_metrics_json_names_the_missing_file",)),
    Mutant("load-run-file-not-named", "load_run given a file says the run folder does not exist",
           "inference/run.py", "if run_dir.is_file():", "if False:",
           ("tests/test_api.py::test_a_file_given_as_the_run_folder_is_named_a_file",)),
    Mutant("load-exported-folder-not-named", "load_exported given a folder does not say it is a folder",
           "cigl_bayes/export.py", "if path.is_dir():", "if False:",
           ("tests/test_export.py::test_loading_refuses_other_files",)),
    Mutant("report-run-file-not-named", "a report given a file as a run folder says it does not exist",
           "experiments/cli.py", "if r.is_file():", "if False:",
           ("tests/test_cli.py::test_a_file_given_as_a_run_folder_is_named_a_file",)),
    Mutant("resume-ignores-config-json", "resuming ignores a config.json that disagrees with the checkpoint",
           "cigl_bayes/train.py", 'problem = config_file_problem(self.out, state["config"])', "problem = None",
           ("tests/test_run_integrity.py::test_resuming_refuses_a_config_json_that_disagrees_with_the_checkpoint",)),
    Mutant("load-run-ignores-config-json", "load_run ignores a config.json that disagrees with the checkpoint",
           "inference/run.py", 'problem = config_file_problem(run_dir, state["config"])', "problem = None",
           ("tests/test_api.py::test_a_config_json_that_disagrees_with_the_checkpoint_is_refused_by_name",)),
    Mutant("config-json-resume-fields-compared", "config.json is refused for fields a resumption may change "
           "(device, epochs, …)", "cigl_bayes/train.py",
           "if field.name not in RESUME_FREE_FIELDS and mine != theirs:", "if mine != theirs:",
           ("tests/test_api.py::test_a_config_json_that_disagrees_with_the_checkpoint_is_refused_by_name",)),
    Mutant("predict-shape-misquoted", "a refused image batch is quoted in its reshaped shape, not the one given",
           "cigl_bayes/data.py", "got shape {given}", "got shape {tuple(x.shape)}",
           ("tests/test_data.py::test_a_refused_image_batch_is_quoted_in_the_shape_given",)),
    Mutant("cli-prog-not-as-launched", "argparse errors name experiments.X although the module was launched as "
           "cigl_bayes.experiments.X", "experiments/cli.py", 'running.endswith("." + module)',
           'running == module + "."', ("tests/test_cli.py::test_argparse_errors_name_the_module_as_it_was_launched",)),
    # the registered analysis read exactly as registered (the audit of 2026-12-05, third session)
    Mutant("verdict-diverged-before-n", "a diverged CigL run gives a final verdict before five pairs are finished",
           CS, "    if len(done) < len(PRIMARY_SEEDS):\n        return (f\"interim",
           "    if len(done) < len(PRIMARY_SEEDS) and not cigl_only:\n        return (f\"interim",
           (f"{CST}test_a_diverged_run_before_five_pairs_gives_no_verdict",)),
    Mutant("pairs-ignore-diverged", "a pair with a diverged run never counts as finished (interim for ever)", CS,
           ' | {_method_seed(d) for d in diverged}', "",
           (f"{CST}test_a_diverged_cigl_run_is_a_failure_of_cigl_for_its_seed",)),
    Mutant("attribution-unregistered", "a gain that survives the control gets the registered attribution text",
           CS, "controlled.ci_low <= 0 <= controlled.ci_high:", "controlled.ci_low <= 0:",
           (f"{CST}test_a_gain_that_survives_the_control_is_described_not_given_an_unregistered_reading",)),
    Mutant("interim-reads-as-result", "below n = 5 the intervals read as results, not marked descriptive", CS,
           'if p["n"] >= 2 and descriptive:', "if False:",
           (f"{CST}test_no_attribution_is_read_before_five_pairs",)),
    Mutant("registered-json-nan", "registered.json holds NaN tokens (not strict JSON)", CS,
           "return value if math.isfinite(value) else None", "return value",
           (f"{CST}test_no_attribution_is_read_before_five_pairs",)),
    Mutant("tables-hide-bn-protocol", "the study tables drop each predictor's BatchNorm protocol (unrecorded)",
           "experiments/study_runs.py", '"bn_protocol": (result.get("bn_protocol") or {}).get(pred),',
           '"bn_protocol": None,',
           ("tests/test_sweep.py::test_the_tables_name_each_methods_predictor_and_batchnorm_statistics",)),
    Mutant("lppd-mean-of-logs", "the test lppd averages log-likelihoods over draws (Jensen: too low) instead of "
           "log of the mean likelihood", "inference/elpd.py",
           "return logsumexp(flat, axis=0) - math.log(flat.shape[0])", "return flat.mean(axis=0)",
           ("tests/test_diagnostics.py::test_multi_draw_elpd_matches_numpy_lppd",)),
    Mutant("paired-picture-relative", "registered_paired.png draws each seed's relative change, labelled as the "
           "difference", CS, '[scale * d for d in p["deltas"]]', '[scale * d for d in p["relative"]]',
           (f"{CST}test_the_paired_picture_shows_each_seed_and_each_interval_labelled",)),
    Mutant("queue-tables-frozen", "the controlled study's tables stay those of the frozen training copy, never "
           "rebuilt with the checkout's report code", QS, "--tables-only --no-progress > /dev/null); then",
           "--tables-only --no-progress > /dev/null) && false; then", QUEUE),
    Mutant("queue-diverged-retried", "a committed diverged run is trained again at the next start", QS,
           '  if tracked "$folder/diverged.json"; then\n', "  if false; then\n", QUEUE_DIVERGED),
    Mutant("queue-diverged-stops", "a diverged run stops the queue uncommitted, so the analysis never counts it",
           QS, '    if [ ! -f "$work/controlled/runs/$run/diverged.json" ]; then', "    if true; then", QUEUE_DIVERGED),
    Mutant("study-foreign-folder-read", "a copy of a run folder (…-seed3-retry) is read in the registered run's "
           "place", CS, 'RUN_FOLDER = re.compile(r"^(?P<method>.+)-plain-s0\\.95-seed(?P<seed>\\d+)$")',
           'RUN_FOLDER = re.compile(r"^(?P<method>.+)-plain-s0\\.95-seed(?P<seed>\\d+)")',
           (f"{CST}test_copies_and_mislabelled_runs_are_never_read_as_registered_runs",)),
    Mutant("verdict-other-seed-failure", "a CigL divergence at a seed outside 3–7 decides the verdict", CS,
           "if m == method and s in PRIMARY_SEEDS)", "if m == method)",
           (f"{CST}test_a_divergence_outside_the_registered_seeds_decides_nothing",)),
    Mutant("final-reads-descriptive", "the final reading is marked descriptive when a diverged pair is left out",
           CS, 'if n_done < len(PRIMARY_SEEDS) else None', 'if len(first["seeds"]) < len(PRIMARY_SEEDS) else None',
           (f"{CST}test_the_final_reading_is_not_marked_descriptive_when_a_diverged_pair_is_left_out",)),
    # the second new-user trial (2026-12-06)
    Mutant("copy-trains-original", "a deep copy of the trained module (AveragedModel) computes with the original's "
           "weights and sends its gradients there", "cigl_bayes/cigl.py",
           "if cigl is None or cigl._inside or not this.training or this is not trained():",
           "if cigl is None or cigl._inside or not this.training:",
           (f"{MISUSE}test_a_deep_copy_of_the_trained_module_is_a_plain_independent_module",)),
    Mutant("step-after-detach", "cigl.step() after cigl.detach() steps the optimizer on every weight",
           "cigl_bayes/cigl.py", "        if self._detached:\n            raise RuntimeError(",
           "        if False:\n            raise RuntimeError(",
           (f"{MISUSE}test_a_step_after_detach_is_refused_until_attach",)),
    Mutant("resume-settings-unchecked", "a state saved under another keep, method or ΔT is loaded silently",
           "cigl_bayes/cigl.py", "            if differ:\n                raise ValueError(",
           "            if False:\n                raise ValueError(",
           (f"{MISUSE}test_a_state_saved_under_other_settings_is_refused_by_name",
            f"{MISUSE}test_another_distribution_on_resume_is_named")),
    Mutant("resume-length-fixed", "a resumed run cannot be extended (total_steps and T* checked too)",
           "cigl_bayes/settings.py", "if k in saved and k not in EXTENDABLE_SETTINGS and saved[k] != v]",
           "if k in saved and saved[k] != v]",
           (f"{MISUSE}test_a_state_saved_under_other_settings_is_refused_by_name",
            "tests/test_lightning.py::test_a_lightning_checkpoint_resumes_with_its_own_weights_and_mask")),
    Mutant("posterior-needs-bn-loader", "posterior(cigl) of a model without BatchNorm demands a BatchNorm loader",
           "inference/posterior.py", "            if not has_batchnorm(self.net.module):\n                return ()",
           "            if False:\n                return ()",
           (f"{MISUSE}test_posterior_of_a_model_without_batchnorm_needs_no_loader",)),
    Mutant("bn-loader-dtype-unchecked", "a BatchNorm loader of the wrong dtype gives the model's raw error",
           "cigl_bayes/predict.py", "            if not seen and net.autocast_dtype is None:  # under autocast",
           "            if False:  # under autocast",
           (f"{MISUSE}test_a_batchnorm_loader_of_the_wrong_kind_names_the_loader",)),
    Mutant("export-std-unchecked", "export accepts std 0 (NaN predictions)", "cigl_bayes/export.py",
           "    if any(s <= 0 for s in std):", "    if False:",
           ("tests/test_export.py::test_export_refuses_normalisation_and_temperature_that_would_break_predictions",)),
    Mutant("export-temperature-unchecked", "export accepts a negative temperature (every argmax flipped)",
           "cigl_bayes/export.py", "or not math.isfinite(temperature) or temperature <= 0):",
           "or not math.isfinite(temperature)):",
           ("tests/test_export.py::test_export_refuses_normalisation_and_temperature_that_would_break_predictions",)),
    Mutant("callback-options-late", "CigLCallback accepts bad options and fails only at trainer.fit",
           "cigl_bayes/lightning.py", "        CigLSettings.resolve(method=method,", "        dict(method=method,",
           ("tests/test_lightning.py::test_the_callback_checks_its_options_when_built",)),
    Mutant("plain-copy-with-forward", "CigL's copies are deep-copied with the attached forward (a class's own "
           "__deepcopy__ recurses; the copy carries an instance forward)", "cigl_bayes/cigl.py",
           "        self._remove_forward()  # copied without it", "        pass  # copied without it",
           (f"{MISUSE}test_copies_made_by_cigl_meet_a_class_own_deepcopy_without_the_attached_forward",)),
    Mutant("copy-keeps-cigl-alive", "a deep copy of the module keeps the original's CigL and its samples alive",
           "cigl_bayes/cigl.py", "        trainer = weakref.ref(self)  #",
           "        trainer = (lambda o: lambda: o)(self)  #",
           (f"{MISUSE}test_a_pickled_module_and_a_dropped_cigl_leave_nothing_that_blocks_a_new_cigl",)),
    Mutant("pickled-forward-blocks", "a module pickled with CigL attached refuses a new CigL (its stored class "
           "forward taken for another CigL)", "cigl_bayes/cigl.py",
           'return func is type(module).forward and getattr(forward, "__self__", None) is module', "return False",
           (f"{MISUSE}test_a_pickled_module_and_a_dropped_cigl_leave_nothing_that_blocks_a_new_cigl",)),
    Mutant("export-hint-drops-layers", "export advises passing the inner network of a wrapper with layers of its own",
           "cigl_bayes/export.py", "if inner == expected and len(inner) == len(shapes):", "if inner == expected:",
           ("tests/test_export.py::test_no_wrapper_hint_when_the_wrapper_has_layers_of_its_own",)),
    Mutant("export-options-dropped", "load_exported rebuilds with the builder's defaults, not the stored model_options",
           "cigl_bayes/export.py", 'num_classes=int(meta["num_classes"]), **options))',
           'num_classes=int(meta["num_classes"])))',
           ("tests/test_export.py::test_a_builder_s_options_travel_with_the_export",)),
    Mutant("cigl-copy-unattached", "a deep copy of the CigL object keeps the forward that trains the original's "
           "module (its step is refused)", "cigl_bayes/cigl.py",
           "        if new._attached:\n            new._attached = False",
           "        if False:\n            new._attached = False",
           (f"{MISUSE}test_a_deep_copy_of_the_cigl_object_trains_its_own_copy_exactly_as_the_original_trains_on",)),
]
