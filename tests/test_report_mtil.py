"""The report's MTIL / X-TAIL section: Transfer, Average, Last, and average effective rank and drift per task."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from fluxbench.protocols import mtil
from fluxbench.reports import build, write
from fluxbench.tracking import Tracker

TWO = ("protocol=mtil", "benchmark=fomo_digits", "backbone=tiny_clip", "protocol.test_limit=40",
       "protocol.datasets=[DIGITS_INVERTED,DIGITS_NOISE]")
SHORT = ("method.iterations=6", "method.batch_size=16", "method.max_kappa=0.05", "method.lambda_num=3")


def test_the_report_shows_mtil_figures_and_the_average_effective_rank_per_task(make_config, tmp_path):
    cfg = make_config(*TWO, "method=codyra", *SHORT)
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    seed = mtil.run(cfg, tracker)["seeds"][0]
    zero = make_config(*TWO, "method=clip_zeroshot")
    mtil.run(zero, tracker)

    # both per-task diagnostics are stepped MLflow metrics: one value per task, at steps 0 and 1
    client = MlflowClient(cfg["tracking"]["uri"])
    ranks = {m.step: m.value for m in client.get_metric_history(seed.run_id, "effective_rank_mean")}
    drift = {m.step: m.value for m in client.get_metric_history(seed.run_id, "drift")}
    assert sorted(ranks) == sorted(drift) == [0, 1]
    assert all(0 <= r < 16 for r in ranks.values()) and drift[1] > drift[0] > 0
    modules = [k for k in client.get_run(seed.run_id).data.metrics if k.startswith("rank/")]
    assert len(modules) == 6 * (3 + 2)  # per module too: six linears per block of both towers
    assert len(client.get_metric_history(seed.run_id, modules[0])) == 2

    report = build(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    table = report.mtil.set_index("method")
    assert set(table.index) == {"codyra", "clip_zeroshot"}
    row = table.loc["codyra"]
    assert row["rank t1"] == pytest.approx(ranks[0]) and row["rank t2"] == pytest.approx(ranks[1])
    assert row["drift t2"] == pytest.approx(drift[1])
    for name in ("mtil_transfer", "mtil_average", "mtil_last", "xtail_last"):
        assert row[name] == pytest.approx(100 * seed.metrics[name])
    assert table.loc["clip_zeroshot"].isna()["rank t1"]  # no gates, no rank

    files = {p.name: p.read_text() for p in write(report, tmp_path / "report")}
    md = files["leaderboard.md"]
    section = md[md.index("## MTIL / X-TAIL"):]
    assert "MTIL transfer (%)" in section and "X-TAIL last (%)" in section and "rank t2" in section
    assert f"{ranks[1]:.2f}" in section and "mtil.csv" in files and 'id="mtil"' in files["index.html"]
