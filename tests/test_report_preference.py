"""The report's preference section (IBCL, specs/ibcl.md sections 5 and 8) on a store filled by real short runs of
``protocol=preference``: the per-task accuracy table, the cost columns and the two-task sweep plot."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from fluxbench.protocols import preference
from fluxbench.reports import build, write
from fluxbench.tracking import Tracker
from fluxbench.tracking.layout import PREFERENCE_ACCURACIES_ARTIFACT

SMALL = ("protocol=preference", "benchmark=digits_pairs", "protocol.prefs_per_task=3", "protocol.sweep_points=3",
         "method.epochs=2")


def test_preference_table_and_sweep_plot(make_config, tmp_path):
    seeds = {}
    for name in ("ibcl", "pref_replay"):
        extra = ["method.num_models_per_pref=2"] if name == "ibcl" else []
        cfg = make_config(*SMALL, f"method={name}", *extra)
        seeds[name] = preference.run(cfg, Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"]))["seeds"][0]
    report = build(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    table = report.preference.set_index("method")
    assert sorted(table.index) == ["ibcl", "pref_replay"] and set(table["benchmark"]) == {"digits_pairs"}
    assert [c for c in table.columns if c.startswith("task ")] == [f"task {t}" for t in range(1, 6)]
    for name, seed in seeds.items():
        np.testing.assert_allclose(table.loc[name, [f"task {t}" for t in range(1, 6)]].to_numpy(dtype=float),
                                   100 * seed.matrix[-1])  # the last row of A, in percent
        assert table.loc[name, "avg_per_task_acc_mean"] == pytest.approx(100 * seed.metrics["avg_per_task_acc_mean"])
        assert table.loc[name, "models_trained"] == seed.metrics["models_trained"]
        assert table.loc[name, "seeds"] == 1
    assert table.loc["pref_replay", "models_trained"] > table.loc["ibcl", "models_trained"] == 15
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    logged = json.loads(tracker.read_text(seeds["ibcl"].run_id, PREFERENCE_ACCURACIES_ARTIFACT))
    np.testing.assert_allclose(report.sweeps[("digits_pairs", "ibcl")]["acc"], logged["sweep"])

    files = write(report, tmp_path / "out")
    html = (tmp_path / "out" / "index.html").read_text()
    section = html[html.index('<section class="card" id="preference">'):]
    section = section[: section.index("</section>")]
    assert 'href="#preference"' in html and section.count('<table class="preference">') == 1
    assert "Preference sweep after task 2" in section and section.count('src="data:image/png;base64,') == 1
    assert "<td>pref_replay</td>" in section and "models trained" in section
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "## Preferences (IBCL's evaluation)" in md and "| pref_replay |" in md
    csv = pd.read_csv(tmp_path / "out" / "preference.csv")
    assert tmp_path / "out" / "preference.csv" in files and sorted(csv["method"]) == ["ibcl", "pref_replay"]
