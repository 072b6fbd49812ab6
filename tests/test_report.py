"""``fluxbench report`` on a store filled by real short runs: numbers recomputed from the logged matrices,
ranks, excluded failed/unfinished runs, two-phase and TTA tables, files, and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from report_store import (
    BY_HAND,
    CPT_GFLOPS,
    CPT_PATHS,
    CPT_ZERO_SHOT,
    EXPERIMENT,
    SIZES,
    TTA_ERRORS,
    TWO_PHASE,
    cli_report,
    matrix,
    protocol_run,
    report_store,
)
from scipy import stats

from fluxbench.cli import main
from fluxbench.protocols.metrics import mean_std_ci, summarize_matrix
from fluxbench.reports import build, write
from fluxbench.tracking import Tracker
from fluxbench.tracking.mlflow_store import read_matrix


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return report_store(tmp_path_factory)


@pytest.fixture(scope="module")
def report(store):
    return build(store.uri, EXPERIMENT)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    return cli_report(tmp_path_factory)  # `fluxbench report --tracking-uri <store> --out <dir>`


@pytest.fixture(scope="module")
def files(cli):
    return cli[0]


def rows(report, protocol: str, benchmark: str = "digits") -> pd.DataFrame:
    board = report.board
    return board[(board["protocol"] == protocol) & (board["benchmark"] == benchmark)].set_index("method")


def recomputed(tracker: Tracker, parent_id: str) -> dict[str, dict[str, float]]:
    """Mean/std/CI of each metric over the parent's seed runs, straight from their logged matrices."""
    per_seed = []
    for child in tracker.children(parent_id, "tags.`fluxbench.kind` = 'seed'"):
        R = read_matrix(tracker.read_text(child.info.run_id, "accuracy_matrix.csv"))
        per_seed.append(summarize_matrix(R, json.loads(child.data.tags["fluxbench.sizes"])))
    return {m: mean_std_ci([s[m] for s in per_seed]) for m in ("last_accuracy", "avg_incremental_accuracy",
                                                                   "forgetting", "bwt")}


def test_numbers_are_recomputed_from_the_logged_matrices(store, report, files):
    tracker = Tracker(store.uri, EXPERIMENT)
    board = rows(report, "conventional")
    csv = pd.read_csv(files / "leaderboard.csv")
    csv = csv[csv["protocol"] == "conventional"].set_index("method")
    assert sorted(board.index) == ["finetune", "prototype"]
    for method, run_id in store.finished.items():
        expected = recomputed(tracker, run_id)
        assert board.loc[method, "seeds"] == 2 and board.loc[method, "run_id"] == run_id
        for metric, s in expected.items():
            for key in ("mean", "std", "ci95"):
                assert board.loc[method, f"{metric}_{key}"] == pytest.approx(s[key], abs=1e-12), (method, metric)
                assert csv.loc[method, f"{metric}_{key}"] == pytest.approx(s[key], abs=1e-9)
        # and they agree with what the protocol logged on the parent (up to the CSV's 6 decimals)
        logged = tracker.client.get_run(run_id).data.metrics
        assert board.loc[method, "last_accuracy_mean"] == pytest.approx(logged["last_accuracy_mean"], abs=1e-5)
        walls = [c.data.metrics["wall_time_s"] for c in tracker.children(run_id)]
        assert board.loc[method, "wall_time_s_mean"] == pytest.approx(np.mean(walls))


def test_ranks_follow_the_recomputed_means(report):
    board = rows(report, "conventional")
    order = board["last_accuracy_mean"].sort_values(ascending=False).index
    assert list(board.loc[order, "rank"]) == [1, 2]
    assert board.loc["prototype", "rank"] == 1  # nearest class mean beats one epoch of fine-tuning here
    assert (board["ranked_by"] == "last_accuracy").all()


def test_failed_and_unfinished_runs_are_excluded_and_counted(store, report, files):
    board = report.board
    assert store.failed_id not in set(board["run_id"]) and store.running_id not in set(board["run_id"])
    assert "joint" not in set(board["method"])  # only the still-running run had it, with perfect accuracy
    assert rows(report, "conventional").loc["prototype", "configs"] == 1
    assert dict(report.collected.skipped) == {"failed": 1, "running": 1}
    assert "Skipped 2 protocol runs (1 failed, 1 running)" in report.used
    assert report.used in (files / "leaderboard.md").read_text()


def test_real_two_phase_runs_phase2_recomputed_conventional_from_the_parent(store, report):
    tracker = Tracker(store.uri, EXPERIMENT)
    board = rows(report, "two_phase")
    tp = report.two_phase.set_index("method")
    assert sorted(board.index) == sorted(tp.index) == ["finetune", "prototype"]
    for method, run_id in store.two_phase.items():
        expected = recomputed(tracker, run_id)  # the phase-2 seed runs directly under the parent
        assert board.loc[method, "seeds"] == 2 and board.loc[method, "run_id"] == run_id
        for metric, s in expected.items():
            assert board.loc[method, f"{metric}_mean"] == pytest.approx(s["mean"], abs=1e-12)
            assert board.loc[method, f"{metric}_ci95"] == pytest.approx(s["ci95"], abs=1e-12)
        logged = tracker.client.get_run(run_id).data.metrics
        assert tp.loc[method, "conventional"] == logged["conventional_last_accuracy"]
        assert tp.loc[method, "two_phase"] == board.loc[method, "last_accuracy_mean"]
        assert tp.loc[method, "gap"] == pytest.approx(logged["overestimation_gap"], abs=1e-5)
    for column, scores in (("rank_conventional", tp["conventional"]), ("rank_two_phase", tp["two_phase"])):
        assert list(tp.sort_values(column).index) == list(scores.sort_values(ascending=False).index)
    expected_tau = stats.kendalltau(tp["conventional"], tp["two_phase"]).statistic
    assert tp["kendall_tau"].iloc[0] == pytest.approx(expected_tau, nan_ok=True)


def test_two_phase_ranking_change_gap_and_kendall_tau(store, tmp_path):
    """The hand-built layout, with numbers chosen so that the ranking changes."""
    report = build(store.uri, BY_HAND)
    write(report, tmp_path)
    files = tmp_path
    # phase 2 is recomputed from the matrices (the seeds' and the parent's logged last accuracy are decoys)
    board = rows(report, "two_phase")
    for method, (_, last) in TWO_PHASE.items():
        assert board.loc[method, "last_accuracy_mean"] == pytest.approx(last + 0.01)
        assert board.loc[method, "seeds"] == 2  # the phase-1 tuning seed is not among them
    tp = report.two_phase.set_index("method")
    conv = {m: c for m, (c, _) in TWO_PHASE.items()}
    two = {m: last + 0.01 for m, (_, last) in TWO_PHASE.items()}
    for method in TWO_PHASE:
        assert tp.loc[method, "conventional"] == pytest.approx(conv[method])
        assert tp.loc[method, "gap"] == pytest.approx(conv[method] - two[method])
    assert tp["rank_conventional"].to_dict() == {"finetune": 1, "replay": 2, "prototype": 3}
    assert tp["rank_two_phase"].to_dict() == {"prototype": 1, "finetune": 2, "replay": 3}
    expected_tau = stats.kendalltau(list(conv.values()), list(two.values())).statistic
    assert tp["kendall_tau"].iloc[0] == pytest.approx(expected_tau) == pytest.approx(-1 / 3)
    md = (files / "leaderboard.md").read_text()
    assert "Kendall tau between the two rankings: -0.33" in md
    assert "| prototype | 80.00 | 71.00 | 9.00 | 3 | 1 | +2 |" in md
    # a seed that diverged stays in the figure and is said beside it
    assert tp["diverged"].to_dict() == {"prototype": 0, "finetune": 0, "replay": 1}
    assert "| replay | 85.00 | 50.00 (1 of 2 seeds diverged) |" in md
    assert "50.00 (1 of 2 seeds diverged)" in (files / "index.html").read_text()
    assert (files / "two_phase.csv").is_file()


def test_tta_rows_rank_by_mean_error_with_errors_per_domain(report, files):
    board = rows(report, "online_tta", "digits-c")
    assert list(board.sort_values("rank").index) == ["tent", "source"]
    assert (board["ranked_by"] == "mean_error").all()
    for method, errors in TTA_ERRORS.items():
        for domain, values in errors.items():
            assert board.loc[method, f"error.{domain}_mean"] == pytest.approx(np.mean(values))
        per_seed = [np.mean([e[s] for e in errors.values()]) for s in (0, 1)]
        assert board.loc[method, "mean_error_ci95"] == pytest.approx(mean_std_ci(per_seed)["ci95"])
        assert board.loc[method, "flops_mean"] == pytest.approx(2.005e9)
    md = (files / "leaderboard.md").read_text()
    assert "| rank | method | mean error (%) | FLOPs | wall time (s) | seeds |" in md
    assert "| 1 | tent | 44.67 ± 0.47 [±4.24] | 2.00 G ± 7.07 M | 1.5 ± 0.0 | 2 |" in md
    assert "digits-c · online_tta: error per domain (%)" in md and "| tent | 34.00 | 54.00 | 46.00 |" in md


def test_continual_pretraining_section_table_csv_and_update_paths(report, files):
    cpt = report.pretraining.set_index("method")
    gmeans = {m: [float(np.sqrt(s[-1][0] * s[-1][1])) for s in seeds[:2]] for m, seeds in CPT_PATHS.items()}
    assert cpt["rank"].to_dict() == {"ema_merge": 1, "cpt_finetune": 2, "cpt_lora": 3}  # by gmean
    for method, (*seeds, steps) in CPT_PATHS.items():
        finals = np.array([s[-1] for s in seeds])
        assert cpt.loc[method, "A_KA_mean"] == pytest.approx(finals[:, 0].mean())
        assert cpt.loc[method, "A_ZS_std"] == pytest.approx(finals[:, 1].std(ddof=1))
        assert cpt.loc[method, "gmean_mean"] == pytest.approx(np.mean(gmeans[method]))
        assert cpt.loc[method, "A_KA_zero_shot"] == pytest.approx(CPT_ZERO_SHOT[0])
        assert cpt.loc[method, "steps_per_task"] == steps and cpt.loc[method, "tasks"] == 2
        assert cpt.loc[method, "training_flops"] == pytest.approx(2 * steps * CPT_GFLOPS[method] * 1e9)
        # the path: the zero-shot point, then one point per task, (A_ZS, A_KA), mean over seeds
        path = report.paths[("fomo_digits", method)]
        expected = np.mean([[CPT_ZERO_SHOT[::-1], *[(zs, ka) for ka, zs in s]] for s in seeds], axis=0)
        assert path == pytest.approx(expected, abs=1e-6)
    md = (files / "leaderboard.md").read_text()
    assert "## fomo_digits · continual_pretraining (ranked by gmean of A_KA, A_ZS (%))" in md
    assert ("| rank | method | A_KA (%) | A_ZS (%) | gmean (%) | zero-shot KA / ZS | steps/task | FLOPs/step "
            "| mem x | train FLOPs | seeds |") in md
    g = gmeans["ema_merge"]
    assert (f"| 1 | ema_merge | 61.00 ± 1.41 | 54.00 ± 1.41 | {100 * np.mean(g):.2f} ± {100 * np.std(g, ddof=1):.2f} "
            "| 30.00 / 60.00 | 20 | 2.00 G | 1.000 | 80.0 G | 2 |") in md
    assert "| 3 | cpt_lora | 41.00 ± 1.41 | 58.00 ± 1.41 |" in md and "| 27 | 1.60 G | 0.930 | 86.4 G | 2 |" in md
    csv = pd.read_csv(files / "continual_pretraining.csv").set_index("method")
    assert csv.loc["cpt_lora", "A_ZS_mean"] == pytest.approx(0.58) and csv.loc["cpt_lora", "steps_per_task"] == 27
    page = (files / "index.html").read_text()
    start = page.index('<section class="card" id="fomo-digits-continual-pretraining">')
    section = page[start:page.index("</section>", start)]
    assert section.count('<table class="leaderboard pretraining">') == 1 and section.count("<tr>") == 1 + 3
    assert section.count('src="data:image/png;base64,') == 1 and "Update paths in (A_ZS, A_KA)" in section


def test_files_one_row_per_method_benchmark_protocol(report, files):
    csv = pd.read_csv(files / "leaderboard.csv")
    assert len(csv) == 2 + 2 + len(TTA_ERRORS) + len(CPT_PATHS)
    assert not csv.duplicated(["benchmark", "protocol", "method"]).any()
    md = (files / "leaderboard.md").read_text()
    proto = rows(report, "conventional").loc["prototype"]
    assert (f"| 1 | prototype | {100 * proto['last_accuracy_mean']:.2f} ± {100 * proto['last_accuracy_std']:.2f} "
            f"[±{100 * proto['last_accuracy_ci95']:.2f}]") in md
    assert proto["config_hash"] in md
    page = (files / "index.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count('src="data:image/png;base64,') >= 5


def test_cli_writes_the_report_and_prints_the_ranking(cli):
    folder, out = cli
    assert "digits · conventional (ranked by last acc (%)):" in out and "1. prototype" in out
    assert "two-phase digits: prototype conventional rank 1 -> two-phase rank 1" in out
    assert "Skipped 2 protocol runs (1 failed, 1 running)." in out
    assert "fomo_digits · continual_pretraining (ranked by gmean of A_KA, A_ZS (%)):" in out
    assert sorted(p.name for p in folder.iterdir()) == ["continual_pretraining.csv", "index.html", "leaderboard.csv",
                                                        "leaderboard.md", "two_phase.csv"]


def one_line_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["report", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_empty_store_is_one_line(store, capsys):
    err = one_line_error(capsys, "--tracking-uri", store.empty_uri)
    assert f"experiment 'fluxbench' in {store.empty_uri} has no runs" in err and "fluxbench run" in err


def test_unknown_experiment_names_the_existing_ones(store, capsys):
    err = one_line_error(capsys, "--tracking-uri", store.uri, "--experiment", "nope")
    assert "unknown experiment 'nope'" in err and "experiments there: Default, fluxbench" in err


def test_missing_and_unreadable_stores_are_one_line(tmp_path, capsys):
    missing = tmp_path / "absent.db"
    assert "no MLflow store at" in one_line_error(capsys, "--tracking-uri", f"sqlite:///{missing}")
    assert not missing.exists()  # reading never creates a store
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    assert "cannot read the MLflow store" in one_line_error(capsys, "--tracking-uri", f"sqlite:///{garbage}")


def test_only_failed_runs_say_how_many(store, tmp_path, capsys):
    shutil.copy(store.empty_uri.removeprefix("sqlite:///"), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, EXPERIMENT)
    parent = protocol_run(tracker, "h1", "conventional", "finetune", "digits")
    run = tracker.start("seed 0", "h2", "seed", parent.run_id, {"seed": 0, "phase": "evaluation"})
    tracker.log_matrix(run, matrix(0.5))
    tracker.set_tags(run, {"fluxbench.sizes": SIZES})
    tracker.end(run)
    tracker.end(parent, "FAILED")
    err = one_line_error(capsys, "--tracking-uri", uri)
    assert "has no finished runs (skipped 1 failed)" in err


def test_reports_never_import_methods_or_torch():
    code = ("import sys, fluxbench.reports, fluxbench.reports.cli; "
            "print(sorted(m for m in sys.modules if m.startswith('fluxbench.methods') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_one_row_per_method_keeps_the_best_config_and_counts_failed_seeds(store, tmp_path):
    """Built by hand: two finished configs of one method (a conventional sweep), one with a failed seed."""
    shutil.copy(store.empty_uri.removeprefix("sqlite:///"), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, EXPERIMENT)
    ids = {}
    for key, lasts, failed_seed in (("low", (0.40, 0.44), False), ("high", (0.60, 0.64), True)):
        parent = protocol_run(tracker, key, "conventional", "finetune", "digits")
        for seed, last in enumerate(lasts):
            run = tracker.start(f"seed {seed}", f"{key}-{seed}", "seed", parent.run_id, {"seed": seed, "phase":
                                                                                         "evaluation"})
            tracker.log_matrix(run, matrix(last))
            tracker.set_tags(run, {"fluxbench.sizes": SIZES})
            tracker.end(run)
        if failed_seed:
            run = tracker.start("seed 2", f"{key}-2", "seed", parent.run_id, {"seed": 2, "phase": "evaluation"})
            tracker.end(run, "FAILED")
        tracker.end(parent)
        ids[key] = parent.run_id
    report = build(uri, EXPERIMENT)
    row = report.board.set_index("method").loc["finetune"]
    assert len(report.board) == 1 and row["run_id"] == ids["high"] and row["configs"] == 2
    assert row["seeds"] == 2 and row["last_accuracy_mean"] == pytest.approx(0.62)
    assert "plus 1 other finished config of the same methods not shown" in report.used
    assert "1 seed run (1 failed) of finished protocol runs" in report.used


def test_the_ranking_metric_is_the_one_the_parent_names(store, tmp_path):
    """A parent that says it is ranked by forgetting (lower is better) is ranked so, whatever columns exist."""
    shutil.copy(store.empty_uri.removeprefix("sqlite:///"), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, EXPERIMENT)
    nan = np.nan
    learns_and_forgets = np.array([[0.99, nan, nan], [0.50, 0.99, nan], [0.50, 0.50, 0.99]])
    learns_little_keeps_it = np.array([[0.50, nan, nan], [0.48, 0.50, nan], [0.47, 0.48, 0.50]])
    for method, R in (("finetune", learns_and_forgets), ("prototype", learns_little_keeps_it)):
        parent = protocol_run(tracker, method, "conventional", method, "digits",
                              **{"fluxbench.rank_metric": "forgetting", "fluxbench.rank_order": "min"})
        run = tracker.start("seed 0", f"{method}-0", "seed", parent.run_id, {"seed": 0, "phase": "evaluation"})
        tracker.log_matrix(run, R)
        tracker.set_tags(run, {"fluxbench.sizes": SIZES})
        tracker.end(run)
        tracker.end(parent)
    board = build(uri, EXPERIMENT).board.set_index("method")
    assert (board["ranked_by"] == "forgetting").all()
    assert board.loc["prototype", "rank"] == 1 and board.loc["finetune", "rank"] == 2
    assert board["last_accuracy_mean"].idxmax() == "finetune"  # the column a guess would have ranked by
