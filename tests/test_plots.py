"""The plots of `prefrec report` (prefrec.evaluation.plots): what each figure draws, read back from the Figure."""

import json

import pytest
from test_report import _write_run

from prefrec.evaluation import plots
from prefrec.evaluation.report import (
    GROUP_KEYS,
    find_results,
    group_label,
    key_metrics,
    make_report,
    summarize,
)


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plots would save, by file name (saved for real too, so the paths exist)."""
    figures = {}
    save = plots._save

    def keep(fig, path):
        figures[path.name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def _log(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata()), line.get_marker())
            for line in ax.get_lines()}


def test_a_one_step_stage_is_a_marked_point_not_an_empty_line(tmp_path, drawn):
    log = _log(tmp_path / "run" / "metrics.jsonl",
               [{"split": "train", "stage": "sft", "step": 1, "loss": 2.0},
                {"split": "train", "stage": "dmpo", "step": 2, "loss": 0.69, "reward_accuracy": 0.5}])
    path = plots.plot_training_curves(log, tmp_path / "plots", "short")
    loss, acc = drawn[path.name].axes
    assert _lines(loss) == {"sft": ([1], [2.0], "o"), "dmpo": ([2], [0.69], "o")}
    assert _lines(acc) == {"dmpo": ([2], [0.5], "o")}


def test_validation_rows_are_drawn_beside_the_training_line(tmp_path, drawn):
    rows = [{"split": "train", "stage": "sft", "step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 5)]
    rows += [{"split": "valid", "stage": "sft", "step": 2, "loss": 2.9, "n": 4},
             {"split": "valid", "stage": "sft", "step": 4, "loss": 2.8, "n": 4}]
    path = plots.plot_training_curves(_log(tmp_path / "metrics.jsonl", rows), tmp_path / "plots", "run")
    (ax,) = drawn[path.name].axes
    got = _lines(ax)
    assert got["sft (valid)"] == ([2, 4], [2.9, 2.8], "D")
    assert got["sft"][0] == [1, 2, 3, 4] and got["sft"][2] == "o"
    assert {line.get_color() for line in ax.get_lines()} == {"C0"}  # one colour per stage


def test_an_evaluation_only_report_gets_a_plot_of_its_table(tmp_path, drawn):
    root = tmp_path / "runs"
    for seed in range(2):
        _write_run(root / f"zs-{seed}", method="zero-shot", seed=seed)
        _write_run(root / f"sft-{seed}", method="sft", seed=seed, shots=100, shift=0.5)
    out = tmp_path / "report"
    text = make_report([root], out, n_boot=10).read_text()
    (name,) = [n for n in drawn if n.endswith("-by-configuration.png")]
    assert f"plots/{name}" in text and (out / "plots" / name).is_file()
    groups = summarize(find_results([root]))[0]
    ax = drawn[name].axes[0]
    names = {round(t.get_position()[1]): t.get_text() for t in ax.get_yticklabels()}
    bars = {names[round(p.get_y() + p.get_height() / 2)]: p.get_width() for p in ax.patches}
    assert bars == {g["label"]: pytest.approx(g["metrics"]["auc"]["mean"]) for g in groups}
    report = json.loads((out / "results.json").read_text())
    assert [p.rsplit("/", 1)[-1] for p in report["plots"]["configuration"]] == [name]


def test_a_configuration_run_at_one_shots_value_is_a_point_on_the_shots_plot(tmp_path, drawn):
    """SFT at two sizes makes the plot; DMPO at one of them is drawn on it as a point (it used to be left out)."""
    for method, shots in (("sft", 30), ("sft", 100), ("dmpo", 100)):
        _write_run(tmp_path / "runs" / f"{method}-{shots}", method=method, seed=0, k=3 if method == "dmpo" else None,
                   shots=shots)
    groups = summarize(find_results([tmp_path / "runs"]))[0]
    made = plots.plot_metric_vs(groups, "shots", tmp_path / "plots", keys=GROUP_KEYS, label=group_label,
                                preferred=key_metrics)
    assert len(made) == 1
    legend = [t.get_text() for t in drawn[made[0][3].name].axes[0].get_legend().get_texts()]
    assert any(label.startswith("dmpo") for label in legend) and any(label.startswith("sft") for label in legend)


@pytest.mark.parametrize("sizes, scale", [((30, 100), "linear"), ((1000, 3000, 10000), "log")])
def test_training_sizes_spanning_a_factor_of_five_get_a_log_axis_ticked_at_the_sizes(tmp_path, drawn, sizes, scale):
    for shots in sizes:
        _write_run(tmp_path / "runs" / f"sft-{shots}", method="sft", seed=0, shots=shots)
    groups = summarize(find_results([tmp_path / "runs"]))[0]
    (made,) = plots.plot_metric_vs(groups, "shots", tmp_path / "plots", keys=GROUP_KEYS, label=group_label,
                                   preferred=key_metrics)
    ax = drawn[made[3].name].axes[0]
    assert ax.get_xscale() == scale
    if scale == "log":
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1,000", "3,000", "10,000"]
