"""``fluxbench reproduce``: every preset in conf/experiment composes and carries only verified figures; the command
lists them, refuses an unknown name in one line, runs one preset on tiny real-format files and prints measured,
published and difference; the report shows the run in its reproduction table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import compose_config
from datasets_fixtures import write_cifar10
from test_corruption_readers import write_cifar_c

from fluxbench.cli import main
from fluxbench.methods.registry import validate_hyperparameters
from fluxbench.protocols.metrics import summarize_matrix
from fluxbench.protocols.online_tta import tta_metrics
from fluxbench.reproduce import EXPERIMENTS, Figure, comparison_lines, load_figure, preset_names

ROOT = Path(__file__).resolve().parents[1]
# the specs live beside the repository (they are the project's reference, not part of the package)
SPECS = Path(os.environ.get("FLUXBENCH_SPECS", ROOT.parent / "shared" / "specs"))
PRESETS = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def logged_metrics(protocol: str) -> set[str]:
    """What a protocol aggregates over seeds (the parent logs ``<name>_mean``), from the code that computes it."""
    if protocol == "online_tta":
        exp = SimpleNamespace(metadata={"corruption": "fog", "severity": 5, "setting": "gradual"})
        return set(tta_metrics([exp], [np.array([True, False])]))
    return set(summarize_matrix(np.array([[0.9, 0.0], [0.7, 0.8]]), [1, 1]))


def test_the_presets_cover_the_issue():
    names = set(preset_names())
    for method in ("mos", "lae"):
        assert {f"{method}_{b}" for b in ("cifar100", "imagenet_r", "imagenet_a", "cub")} <= names
    assert {"gtep_mos_imagenet_r_to_a", "gtep_mos_imagenet_r_to_cub", "gtep_replay_cifar50"} <= names
    assert {f"{m}_{b}" for m in ("tent", "vida", "cema") for b in ("cifar10_c", "imagenet_c")} <= names


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_composes(name):
    cfg = compose_config(f"+experiment={name}")
    figure = load_figure(name)
    assert cfg["reproduce"]["name"] == name and cfg["reproduce"]["metric"] == figure.metric
    validate_hyperparameters(cfg["method"])  # the preset's method values pass the method's own checks
    assert figure.metric in logged_metrics(cfg["protocol"]["name"])
    assert set(figure.also) <= logged_metrics(cfg["protocol"]["name"])
    if figure.published is None:
        assert figure.note, "a preset without a figure says why"
        assert not figure.also
    else:
        assert figure.tolerance is not None and figure.source.startswith("specs/")


@pytest.mark.parametrize("name", [n for n in PRESETS if load_figure(n).published is not None])
def test_published_figures_are_the_specs_verified_ones(name):
    figure = load_figure(name)
    spec = SPECS / Path(figure.source.split()[0]).name
    if not spec.is_file():
        pytest.skip(f"{spec} not here (set FLUXBENCH_SPECS)")
    lines = spec.read_text().splitlines()
    for value in figure.targets().values():
        text = f"{value:g}"
        # one spec line holds the figure and calls it verified (not "unverified", not "from memory")
        hits = [ln for ln in lines if re.search(rf"(?<![\d.]){re.escape(text)}(?![\d])", ln)
                and re.search(r"(?<!un)verified", ln) and "from memory" not in ln]
        assert hits, f"{spec.name} has no verified line with {text}"


def test_comparison_lines_judge_the_tolerance():
    fig = Figure("x", "mean_error", 18.6, 1.0, "specs/tent.md", also={})
    assert comparison_lines(fig, {"mean_error": 0.19})[-1].endswith("+0.40  (within ±1)")
    assert "(outside ±1)" in comparison_lines(fig, {"mean_error": 0.25})[-1]
    none = comparison_lines(Figure("y", "last_accuracy", None, note="not verified"), {"last_accuracy": 0.5})
    assert none[1:] == ["  last_accuracy measured:   50.00", "  last_accuracy published:  none (not verified)"]


def test_reproduce_lists_the_presets(capsys):
    main(["reproduce"])
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out
    assert re.search(r"tent_cifar10_c\s+mean_error 18\.6 ±1", out)
    assert re.search(r"lae_imagenet_r\s+last_accuracy 71\.19 ±1, avg_incremental_accuracy 81\.92", out)


def test_an_unknown_preset_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "tent_cifar100_c"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "unknown preset 'tent_cifar100_c'; known:" in err[0] and "tent_cifar10_c" in err[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``fluxbench reproduce tent_cifar10_c`` on a tiny CIFAR-10 + CIFAR-10-C in the released formats, shrunk."""
    root = tmp_path_factory.mktemp("reproduce")
    write_cifar10(root / "data", per_batch=20)
    write_cifar_c(root / "data")
    shrink = ["data_root=data", "benchmark.corruptions.names=[gaussian_noise,fog]",
              "benchmark.source_models.default.epochs=1", "benchmark.source_models.default.args.width=8",
              "protocol.batch_size=2", "progress=false"]
    out = subprocess.run([sys.executable, "-m", "fluxbench.cli", "reproduce", "tent_cifar10_c", *shrink], cwd=root,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return root, out.stdout


def test_a_preset_runs_on_tiny_files_and_prints_the_comparison(tiny_run):
    _, stdout = tiny_run
    measured = re.search(r"mean_error measured: +(\d+\.\d\d)\n", stdout)
    assert measured, stdout
    assert "mean_error published:  18.60  [specs/tent.md" in stdout
    diff = re.search(r"mean_error difference: ([+-]\d+\.\d\d)  \((within|outside) ±1\)", stdout)
    assert diff and float(diff.group(1)) == pytest.approx(float(measured.group(1)) - 18.6, abs=0.011)


def test_the_report_has_a_reproduction_table(tiny_run):
    from fluxbench.reports.build import build, write

    root, stdout = tiny_run
    report = build(f"sqlite:///{root / 'mlflow.db'}", "fluxbench")
    rows = report.reproduction
    assert list(rows["preset"]) == ["tent_cifar10_c"] and list(rows["metric"]) == ["mean_error"]
    measured = float(re.search(r"mean_error measured: +(\d+\.\d\d)", stdout).group(1))
    assert rows["measured"].iloc[0] == pytest.approx(measured, abs=0.006)
    assert rows["published"].iloc[0] == 18.6 and rows["tolerance"].iloc[0] == 1.0
    files = {p.name: p for p in write(report, root / "report")}
    md, page = files["leaderboard.md"].read_text(), files["index.html"].read_text()
    assert "## Reproduction" in md and re.search(r"\| tent_cifar10_c \| mean_error \| [\d.]+ \| 18\.60 \|", md)
    assert 'id="reproduction"' in page and "<td>tent_cifar10_c</td>" in page
    assert "reproduction.csv" in files
