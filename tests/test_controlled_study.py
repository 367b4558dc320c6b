"""The registered analysis (experiments.controlled_study) on hand-made metrics.json files: it pairs
the registered sides by seed, under the registered protocols, and reads the test as registered."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from cigl_bayes.experiments.controlled_study import PRIMARY_SEEDS, main


def scores(ece: float, acc: float) -> dict:
    return {"accuracy": acc, "confidence": acc + ece, "ece": ece, "ece10": ece * 0.9, "mce": 0.1,
            "nll": 0.5 + ece, "brier": 0.3 + ece / 2}


FINGERPRINT = "5eed" * 4  # the test set every hand-made run was scored on
FIVE_RIGL, FIVE_CIGL = [0.040, 0.045, 0.035, 0.050, 0.042], [0.018, 0.020, 0.017, 0.022, 0.019]


def write_run(root, method: str, seed: int, by_protocol: dict, headline: dict | None = None, itop: float = 0.2):
    folder = root / "runs" / f"{method}-plain-s0.95-seed{seed}"
    folder.mkdir(parents=True)
    metrics = {"completed": True, "seed": seed, "method": method.split("-keep")[0], "itop_rate": itop,
               "test_fingerprint": FINGERPRINT,
               "test": headline or {}, "by_bn_protocol": {p: {"test": v} for p, v in by_protocol.items()},
               "history": [{"epoch": e, "val_accuracy": 0.5, "val_nll": 1.0, "val_ece": 0.05} for e in (1, 2)]}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def study(tmp_path, rigl_tracked, cigl_aug, rigl_aug, acc_delta=0.0, seeds=PRIMARY_SEEDS):
    for i, seed in enumerate(seeds):
        write_run(tmp_path, "rigl", seed, {
            "tracked": {"final": scores(rigl_tracked[i], 0.78)},
            "recomputed-augmented": {"final": scores(rigl_aug[i], 0.78)},
            "recomputed-clean": {"final": scores(rigl_aug[i] + 0.001, 0.78)}},
            headline={"final": scores(rigl_tracked[i], 0.78), "temperature_scaled": scores(0.01, 0.78)})
        write_run(tmp_path, "cigl-keep0.99", seed, {
            "recomputed-augmented": {"wma": scores(cigl_aug[i], 0.78 + acc_delta), "final": scores(0.03, 0.77)},
            "recomputed-clean": {"wma": scores(cigl_aug[i] + 0.002, 0.78 + acc_delta)},
            "tracked": {"final": scores(0.03, 0.77)}}, itop=0.3)
    return tmp_path


def test_primary_pairs_rigl_tracked_with_cigl_wma_recomputed_on_augmented_batches(tmp_path):
    rigl = [0.040, 0.045, 0.035, 0.050, 0.042]
    cigl = [0.018, 0.020, 0.017, 0.022, 0.019]
    rigl_aug = [0.019, 0.021, 0.018, 0.020, 0.017]
    assert main([str(study(tmp_path, rigl, cigl, rigl_aug))]) == 0
    out = json.loads((tmp_path / "registered.json").read_text())
    d = np.array(cigl) - np.array(rigl)
    p = out["primary"]["ece"]
    assert p["seeds"] == list(PRIMARY_SEEDS) and p["deltas"] == pytest.approx(list(d))
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert (p["ci_low"], p["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert p["p"] == pytest.approx(stats.ttest_rel(cigl, rigl).pvalue)
    assert out["verdict"].startswith("the claim holds")
    # the controlled comparison reads the same protocol on both sides: here the gain is gone
    c = out["controlled"]["recomputed-augmented"]["ece"]
    assert c["deltas"] == pytest.approx(list(np.array(cigl) - np.array(rigl_aug)))
    assert c["ci_low"] < 0 < c["ci_high"]
    md = (tmp_path / "registered.md").read_text()
    assert "the claim holds" in md
    assert out["attribution"].startswith("registered: the gain in the paper's protocol is not detectably CigL's own")
    assert "not detectably CigL's own" in md
    assert out["itop"]["rigl"]["mean"] == pytest.approx(0.2) and out["itop"]["cigl-keep0.99"]["mean"] == 0.3
    assert (tmp_path / "validation_curves.png").is_file()


def test_an_interval_that_includes_zero_is_no_detectable_difference(tmp_path):
    rigl = [0.040, 0.020, 0.035, 0.025, 0.042]
    cigl = [0.030, 0.030, 0.030, 0.030, 0.030]
    main([str(study(tmp_path, rigl, cigl, rigl))])
    out = json.loads((tmp_path / "registered.json").read_text())
    assert out["verdict"] == "the claim does not hold at this n: no detectable difference in ECE (the interval " \
                             "includes 0)"


def test_lower_ece_with_lost_accuracy_does_not_hold(tmp_path):
    rigl = [0.040, 0.045, 0.035, 0.050, 0.042]
    cigl = [0.018, 0.020, 0.017, 0.022, 0.019]
    main([str(study(tmp_path, rigl, cigl, rigl, acc_delta=-0.03))])
    out = json.loads((tmp_path / "registered.json").read_text())
    assert "loses accuracy" in out["verdict"]


def test_lower_ece_with_higher_accuracy_holds_and_says_the_accuracies_differ(tmp_path):
    """The registered rule asks only that accuracy is not lost; when it is higher the verdict says so,
    not "no detectable loss", since the two models compared are then not of equal accuracy."""
    rigl = [0.040, 0.045, 0.035, 0.050, 0.042]
    cigl = [0.018, 0.020, 0.017, 0.022, 0.019]
    main([str(study(tmp_path, rigl, cigl, rigl, acc_delta=0.03))])
    verdict = json.loads((tmp_path / "registered.json").read_text())["verdict"]
    assert verdict.startswith("the claim holds: CigL's ECE is lower (interval below 0) with higher accuracy")
    main([str(study(tmp_path / "equal", rigl, cigl, rigl))])
    assert "at no detectable loss of accuracy" in json.loads((tmp_path / "equal" / "registered.json").read_text())[
        "verdict"]


def test_fewer_than_five_pairs_is_interim_without_verdict(tmp_path):
    rigl = [0.040, 0.045, 0.035]
    cigl = [0.018, 0.020, 0.017]
    main([str(study(tmp_path, rigl, cigl, rigl, seeds=(3, 4, 5)))])
    out = json.loads((tmp_path / "registered.json").read_text())
    assert out["verdict"].startswith("interim: 3 of 5")
    assert out["baselines"]["CigL − RigL + temperature scaling"]["ece"]["n"] == 3


def test_the_laplace_baseline_is_paired_with_cigl_by_seed(tmp_path):
    study(tmp_path, FIVE_RIGL, FIVE_CIGL, FIVE_RIGL)
    laplace_ece = [0.012, 0.015, 0.011, 0.016, 0.013]
    for seed, e in zip(PRIMARY_SEEDS, laplace_ece):
        (tmp_path / "runs" / f"rigl-plain-s0.95-seed{seed}" / "laplace.json").write_text(
            json.dumps({"test": scores(e, 0.78)}))
    main([str(tmp_path)])
    out = json.loads((tmp_path / "registered.json").read_text())
    b = out["baselines"]["CigL − RigL + last-layer Laplace"]["ece"]
    assert b["n"] == 5 and b["deltas"] == pytest.approx(list(np.array(FIVE_CIGL) - np.array(laplace_ece)))


def test_a_gain_that_survives_the_control_is_described_not_given_an_unregistered_reading(tmp_path):
    """Only one attribution is registered (a primary gain that the control removes); a gain that also
    survives the control is stated as the two intervals, marked not registered."""
    rigl = [0.040, 0.045, 0.035, 0.050, 0.042]
    cigl = [0.018, 0.020, 0.017, 0.022, 0.019]
    main([str(study(tmp_path, rigl, cigl, [r - 0.002 for r in rigl]))])
    out = json.loads((tmp_path / "registered.json").read_text())
    text = out["attribution"]
    assert text.startswith("the registered attribution does not apply") and "not registered" in text
    assert "primary ΔECE [" in text and "below 0, controlled" in text and text.endswith("below 0")
    assert "CigL's own" not in text


def test_no_attribution_is_read_before_five_pairs(tmp_path):
    rigl, cigl = [0.040, 0.045, 0.035, 0.050], [0.018, 0.020, 0.017, 0.022]
    main([str(study(tmp_path, rigl, cigl, rigl, seeds=(3, 4, 5, 6)))])
    out = json.loads((tmp_path / "registered.json").read_text())
    assert out["attribution"] is None and out["verdict"].startswith("interim: 4 of 5")
    md = (tmp_path / "registered.md").read_text()
    # every read of an interval is marked descriptive until n = 5, and no JSON NaN is written
    primary_rows = md.split("## Primary")[1].split("**Verdict:**")[0]
    assert "| lower (descriptive: 4 of 5 pairs) |" in primary_rows and "| lower |" not in primary_rows
    assert "NaN" not in (tmp_path / "registered.json").read_text()


def diverge(root, method: str, seed: int) -> None:
    folder = root / "runs" / f"{method}-plain-s0.95-seed{seed}"
    if folder.exists():
        (folder / "metrics.json").unlink()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "diverged.json").write_text(json.dumps({"loss": "nan", "step": 100, "epoch": 1}))


def test_a_diverged_cigl_run_is_a_failure_of_cigl_for_its_seed(tmp_path):
    """Amendment 2: a diverged run finishes its pair as a failure of its method; CigL failing where
    RigL did not makes the claim not hold, read at five finished pairs."""
    study(tmp_path, FIVE_RIGL, FIVE_CIGL, FIVE_RIGL)
    diverge(tmp_path, "cigl-keep0.99", 7)
    main([str(tmp_path)])
    out = json.loads((tmp_path / "registered.json").read_text())
    assert out["diverged"] == ["cigl-keep0.99 seed 7"] and out["pairs_finished"] == list(PRIMARY_SEEDS)
    assert out["primary"]["ece"]["n"] == 4
    assert out["verdict"] == "the claim does not hold: CigL failed (diverged) at seed 7, where RigL did not"


def test_a_diverged_run_before_five_pairs_gives_no_verdict(tmp_path):
    rigl, cigl = [0.040, 0.045, 0.035], [0.018, 0.020, 0.017]
    study(tmp_path, rigl, cigl, rigl, seeds=(3, 4, 5))
    diverge(tmp_path, "cigl-keep0.99", 6)  # its RigL pair has not run: the pair is unfinished
    main([str(tmp_path)])
    out = json.loads((tmp_path / "registered.json").read_text())
    assert out["verdict"] == ("interim: 3 of 5 pairs finished; the registered test is read only at n = 5; "
                              "CigL diverged at seed 6")


def test_a_pair_where_rigl_alone_diverged_is_finished_and_left_out_of_the_test(tmp_path):
    study(tmp_path, FIVE_RIGL, FIVE_CIGL, FIVE_RIGL)
    diverge(tmp_path, "rigl", 5)
    main([str(tmp_path)])
    out = json.loads((tmp_path / "registered.json").read_text())
    assert out["pairs_finished"] == list(PRIMARY_SEEDS) and out["primary"]["ece"]["seeds"] == [3, 4, 6, 7]
    assert out["verdict"].startswith("the claim holds")
    assert out["verdict"].endswith("(RigL diverged at seed 5: RigL's failure, that pair left out of the test)")


def test_the_paired_picture_shows_each_seed_and_each_interval_labelled(tmp_path, monkeypatch):
    """registered_paired.png: one row per comparison (primary, both controlled, the baselines with
    data), each seed's ΔECE as a dot and the mean with its t interval; titled with n and, below five
    pairs, 'descriptive'."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PathCollection

    from cigl_bayes.experiments import controlled_study

    figures = {}

    def keep(fig, path):  # instead of saving: kept for the checks below, closed at the end
        figures[path.name] = fig
        plt.close(fig)

    monkeypatch.setattr(controlled_study, "atomic_save_figure", keep)
    rigl, cigl = [0.040, 0.045, 0.035, 0.050, 0.042], [0.018, 0.020, 0.017, 0.022, 0.019]
    for seeds, state in (((3, 4, 5, 6), "descriptive"), (PRIMARY_SEEDS, "the registered reading")):
        root = tmp_path / state
        main([str(study(root, rigl[:len(seeds)], cigl[:len(seeds)], rigl[:len(seeds)], seeds=seeds))])
        out = json.loads((root / "registered.json").read_text())
        fig = figures["registered_paired.png"]
        assert f"{len(seeds)} of 5 pairs finished ({state}" in fig._suptitle.get_text()
        ece_ax = fig.axes[0]
        labels = [t.get_text() for t in ece_ax.get_yticklabels()]
        assert labels == ["primary: CigL [recomputed-augmented] vs RigL [tracked]",
                          "controlled: both [recomputed-augmented]", "controlled: both [recomputed-clean]",
                          "CigL [recomputed-augmented] vs RigL + temperature scaling"]
        dots = [c for c in ece_ax.collections if isinstance(c, PathCollection)]
        primary_x = sorted(dots[0].get_offsets()[:, 0])
        assert primary_x == pytest.approx(sorted(100 * np.array(out["primary"]["ece"]["deltas"])))
        means = [line.get_xdata()[0] for line in ece_ax.lines if line.get_marker() == "D"]
        assert means[0] == pytest.approx(100 * out["primary"]["ece"]["mean"])
        assert "ECE" in ece_ax.get_xlabel() and "NLL" in fig.axes[1].get_xlabel()


def test_the_final_reading_is_not_marked_descriptive_when_a_diverged_pair_is_left_out(tmp_path):
    study(tmp_path, FIVE_RIGL, FIVE_CIGL, FIVE_RIGL)
    diverge(tmp_path, "rigl", 4)
    main([str(tmp_path)])
    md = (tmp_path / "registered.md").read_text()
    primary_rows = md.split("## Primary")[1].split("**Verdict:**")[0]
    assert "| lower |" in primary_rows and "descriptive" not in primary_rows
    assert "Until all five pairs" not in md


def test_a_divergence_outside_the_registered_seeds_decides_nothing(tmp_path):
    study(tmp_path, FIVE_RIGL, FIVE_CIGL, FIVE_RIGL)
    diverge(tmp_path, "cigl-keep0.99", 9)
    main([str(tmp_path)])
    out = json.loads((tmp_path / "registered.json").read_text())
    assert out["diverged"] == ["cigl-keep0.99 seed 9"] and out["verdict"].startswith("the claim holds")


def test_a_pair_where_both_diverged_is_named_in_the_final_verdict(tmp_path):
    study(tmp_path, FIVE_RIGL, FIVE_CIGL, FIVE_RIGL)
    diverge(tmp_path, "rigl", 6)
    diverge(tmp_path, "cigl-keep0.99", 6)
    main([str(tmp_path)])
    out = json.loads((tmp_path / "registered.json").read_text())
    assert out["verdict"].startswith("the claim holds")
    assert "both diverged at seed 6: that pair left out of the test" in out["verdict"]


def test_a_finished_pair_without_a_registered_score_is_named(tmp_path):
    study(tmp_path, FIVE_RIGL, FIVE_CIGL, FIVE_RIGL)
    path = tmp_path / "runs" / "cigl-keep0.99-plain-s0.95-seed5" / "metrics.json"
    metrics = json.loads(path.read_text())
    del metrics["by_bn_protocol"]["recomputed-augmented"]
    path.write_text(json.dumps(metrics))
    main([str(tmp_path)])
    out = json.loads((tmp_path / "registered.json").read_text())
    assert out["primary"]["ece"]["n"] == 4
    assert "seed 5: a side lacks the registered score, that pair left out of the test" in out["verdict"]


def test_copies_and_mislabelled_runs_are_never_read_as_registered_runs(tmp_path, capsys):
    study(tmp_path, FIVE_RIGL, FIVE_CIGL, FIVE_RIGL)
    main([str(tmp_path)])
    before = json.loads((tmp_path / "registered.json").read_text())
    # a copy beside the run, with other scores, and a stray marker in a backup folder
    write_run(tmp_path, "rigl-plain-s0.95-seed3-retry", 3, {"tracked": {"final": scores(0.001, 0.5)}})
    (tmp_path / "runs" / "rigl-plain-s0.95-seed3-retry-plain-s0.95-seed3").rename(
        tmp_path / "runs" / "rigl-plain-s0.95-seed3-retry")
    (tmp_path / "runs" / "rigl-plain-s0.95-seed5.bak").mkdir()
    (tmp_path / "runs" / "rigl-plain-s0.95-seed5.bak" / "diverged.json").write_text("{}")
    assert main([str(tmp_path)]) == 0
    after = json.loads((tmp_path / "registered.json").read_text())
    assert after["primary"] == before["primary"] and after["diverged"] == []
    assert "rigl-plain-s0.95-seed3-retry is not named" in capsys.readouterr().err


def test_a_mislabelled_seed_or_a_stale_divergence_marker_is_refused(tmp_path):
    study(tmp_path, FIVE_RIGL, FIVE_CIGL, FIVE_RIGL)
    path = tmp_path / "runs" / "rigl-plain-s0.95-seed4" / "metrics.json"
    path.write_text(path.read_text().replace('"seed": 4', '"seed": 3'))
    with pytest.raises(ValueError, match="of seed 3, not the folder's seed 4"):
        main([str(tmp_path)])
    path.write_text(path.read_text().replace('"seed": 3', '"seed": 4'))
    (path.parent / "diverged.json").write_text("{}")
    with pytest.raises(ValueError, match="both diverged.json and a completed metrics.json"):
        main([str(tmp_path)])


def test_the_post_hoc_comparisons_are_written_beside_the_registered_ones_and_marked(tmp_path):
    """posthoc.md/.json (experiments.controlled_posthoc, run by the registered analysis): each paired
    comparison by hand, the distribution-free tests of the primary differences, leave-one-seed-out
    intervals, the paired ITOP difference and the last weights' validation range, all marked post hoc."""
    rigl = [0.040, 0.045, 0.035, 0.050, 0.042]
    cigl = [0.018, 0.020, 0.017, 0.022, 0.019]
    rigl_aug = [0.019, 0.021, 0.018, 0.020, 0.017]
    main([str(study(tmp_path, rigl, cigl, rigl_aug))])
    out = json.loads((tmp_path / "posthoc.json").read_text())
    own = out["comparisons"]["RigL's own weights: recomputed-augmented − tracked statistics"]["ece"]
    assert own["deltas"] == pytest.approx(list(np.array(rigl_aug) - np.array(rigl)))
    within = out["comparisons"]["averaging within CigL: its WMA − its own last weights (both recomputed-augmented)"]
    assert within["ece"]["deltas"] == pytest.approx(list(np.array(cigl) - 0.03))
    last = out["comparisons"]["last weights, no averaging on either side: CigL − RigL (both recomputed-augmented)"]
    assert last["accuracy"]["deltas"] == pytest.approx([-0.01] * 5)
    rob, d = out["robustness"], np.array(cigl) - np.array(rigl)
    assert rob["lower_in"] == 5 and rob["sign_test_p"] == pytest.approx(stats.binomtest(5, 5, 0.5).pvalue)
    assert rob["wilcoxon_p"] == pytest.approx(stats.wilcoxon(d, method="exact").pvalue)
    assert [p["left_out"] for p in rob["leave_one_out"]] == list(PRIMARY_SEEDS)
    without_3 = rob["leave_one_out"][0]
    assert without_3["seeds"] == [4, 5, 6, 7] and without_3["mean"] == pytest.approx(d[1:].mean())
    assert out["itop"]["deltas"] == pytest.approx([0.1] * 5) and out["itop"]["mean"] == pytest.approx(0.1)
    assert len(out["last_epochs"]) == 10 and all(r["range"] == 0 for r in out["last_epochs"])
    md = (tmp_path / "posthoc.md").read_text()
    assert md.startswith("# Controlled study: post hoc comparisons (not registered)")
    assert "lower (post hoc)" in md and "registered.md" in md
    assert "post hoc" not in (tmp_path / "registered.md").read_text()  # the registered reading stays apart


def test_the_post_hoc_tests_survive_zero_and_tied_differences_and_a_missing_itop_rate(tmp_path):
    """All-zero differences give p = 1, not a crash after registered.* are written; tied |Δ| take
    Wilcoxon's normal approximation and say so (its exact distribution assumes distinct |Δ|); an
    itop_rate of null is left out of both analyses."""
    rigl = [0.040, 0.045, 0.035, 0.050, 0.042]
    main([str(study(tmp_path / "zero", rigl, rigl, rigl))])
    zero = json.loads((tmp_path / "zero" / "posthoc.json").read_text())["robustness"]
    assert zero["nonzero"] == 0 and zero["sign_test_p"] == 1.0 and zero["wilcoxon_p"] == 1.0
    tied = [r - d for r, d in zip(rigl, [0.010, 0.010, 0.020, 0.020, 0.030])]
    root = study(tmp_path / "tied", rigl, tied, rigl)
    metrics = root / "runs" / "rigl-plain-s0.95-seed3" / "metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "itop_rate": None}))
    assert main([str(root)]) == 0
    out = json.loads((root / "posthoc.json").read_text())
    deltas = np.array(tied) - np.array(rigl)
    assert out["robustness"]["wilcoxon_method"] == "normal approximation (tied |Δ|)"
    assert out["robustness"]["wilcoxon_p"] == pytest.approx(stats.wilcoxon(deltas, method="approx").pvalue)
    assert out["itop"]["seeds"] == [4, 5, 6, 7]
    assert json.loads((root / "registered.json").read_text())["itop"]["rigl"]["n"] == 4
    assert "normal approximation (tied |Δ|)" in (root / "posthoc.md").read_text()


STRONGEST = ("RigL's strongest no-retraining baseline: CigL's WMA − RigL's last weights with a temperature "
             "(both recomputed-augmented)")


def reevaluation(root, method: str, seed: int, ece: float, fingerprint=FINGERPRINT, **extra) -> None:
    """A re-evaluation file as ``experiments.reevaluate --out <study>/reevaluated`` writes it."""
    folder = root / "reevaluated"
    folder.mkdir(exist_ok=True)
    entry = {"temperature": 1.3, "test": scores(ece, 0.78)}
    (folder / f"{method}-plain-s0.95-seed{seed}.json").write_text(json.dumps(
        {"seed": seed, "test_fingerprint": fingerprint, **extra,
         "temperature_by_bn_protocol": {"recomputed-augmented": {"final": entry},
                                        "recomputed-clean": {"final": {**entry, "test": scores(0.5, 0.78)}}}}))


def test_rigl_with_augmented_statistics_and_its_own_temperature_is_read_from_its_reevaluation(tmp_path):
    """RigL's last weights under recomputed-augmented statistics with a temperature fitted under
    them are paired with CigL's primary side; a run not yet re-evaluated is left out, not guessed."""
    rigl = [0.040, 0.045, 0.035, 0.050, 0.042]
    cigl = [0.018, 0.020, 0.017, 0.022, 0.019]
    root = study(tmp_path, rigl, cigl, rigl)
    strongest = [0.011, 0.012, 0.010, 0.013]
    for seed, ece in zip(PRIMARY_SEEDS, strongest):  # seed 7 not re-evaluated
        reevaluation(root, "rigl", seed, ece)
    assert main([str(root)]) == 0
    block = json.loads((root / "posthoc.json").read_text())["comparisons"][STRONGEST]["ece"]
    assert block["seeds"] == [3, 4, 5, 6]
    assert block["deltas"] == pytest.approx(list(np.array(cigl[:4]) - np.array(strongest)))
    assert block["a"] == "rigl final+T [recomputed-augmented]"


def test_a_reevaluation_of_another_seed_or_test_set_is_left_out_and_named_never_stopping_the_analysis(
        tmp_path, capsys):
    root = study(tmp_path, FIVE_RIGL, FIVE_CIGL, FIVE_RIGL)
    reevaluation(root, "rigl", 3, 0.01)
    folder = root / "reevaluated"
    (folder / "rigl-plain-s0.95-seed4.json").write_text((folder / "rigl-plain-s0.95-seed3.json").read_text())
    reevaluation(root, "rigl", 5, 0.01, fingerprint="0" * 16)  # another test set
    (folder / "rigl-plain-s0.95-seed6.json").write_text("{not json")
    assert main([str(root)]) == 0
    err = capsys.readouterr().err
    assert "seed4.json is not a re-evaluation of rigl-plain-s0.95-seed4" in err
    assert "seed5.json is not a re-evaluation of rigl-plain-s0.95-seed5" in err and "seed6.json cannot be read" in err
    assert (root / "registered.md").is_file()
    assert json.loads((root / "posthoc.json").read_text())["comparisons"][STRONGEST]["ece"]["seeds"] == [3]


def test_a_runs_own_per_protocol_temperature_comes_before_its_reevaluation(tmp_path):
    root = study(tmp_path, FIVE_RIGL, FIVE_CIGL, FIVE_RIGL)
    reevaluation(root, "rigl", 3, 0.01)
    path = root / "runs" / "rigl-plain-s0.95-seed3" / "metrics.json"
    own = {"recomputed-augmented": {"final": {"temperature": 1.2, "test": scores(0.005, 0.78)}}}
    path.write_text(json.dumps({**json.loads(path.read_text()), "temperature_by_bn_protocol": own}))
    assert main([str(root)]) == 0
    block = json.loads((root / "posthoc.json").read_text())["comparisons"][STRONGEST]["ece"]
    assert block["seeds"] == [3] and block["deltas"] == pytest.approx([FIVE_CIGL[0] - 0.005])
