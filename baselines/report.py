"""The comparison, written for people: the paper's two tables beside ours, charts and a report.

Everything here reads results documents (the server's shape, plus "framework") and writes
files; nothing trains. Tables come as CSV for scripts and Markdown for people.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from baselines import paper, privacy
from common import quantity

Cell = float | str  # a figure, or why there is none
Key = tuple[str, str]  # (framework, model)


@dataclass
class Comparison:
    """Every run of a reproduction, and what a reader needs to know about how they ran."""

    runs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    missing: dict[Key, str] = field(default_factory=dict)  # why a run has no result
    setup: dict[str, Any] = field(default_factory=dict)  # shown as the report's first table
    notes: list[str] = field(default_factory=list)
    privacy: list[dict[str, Any]] = field(default_factory=list)  # rows of baselines.privacy
    setting: str = "next-day"
    target_std: float | None = None  # of the training rows' target, for standardised MSEs
    forecast: str = quantity.DEFAULT  # the quantity every MSE is in (common/quantity.py)

    def cell(self, framework: str, model: str, metric: str) -> Cell:
        run = self.runs.get((framework, model))
        if run is None:  # the reason's head ("failed", "n/a (…)"); details in 'Every run'
            return self.missing.get((framework, model), "n/a").split(":", 1)[0]
        return float(run["final"]["mse" if metric == "mse" else "train_seconds"])


TABLES = {
    "mse": ("table2_mse", "Table 2: MSE on the test rows", paper.TABLE2_MSE),
    "seconds": ("table3_seconds", "Table 3: ML training time (seconds)", paper.TABLE3_SECONDS),
}


def _number(value: Cell) -> str:
    if isinstance(value, str):
        return value
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def write_table(comparison: Comparison, metric: str, out: Path) -> tuple[Path, Path]:
    """CSV (one row per model: ours and the paper's per framework) and the same as Markdown."""
    name, title, published = TABLES[metric]
    header = ["model"]
    for framework in paper.FRAMEWORKS:
        label = paper.FRAMEWORK_LABELS[framework]
        header += [label, f"{label} (paper)"]
    rows = []
    for model in paper.MODELS:
        row: list[Cell] = [paper.MODEL_LABELS[model]]
        for framework in paper.FRAMEWORKS:
            row += [comparison.cell(framework, model, metric), published[model][framework]]
        rows.append(row)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    with csv_path.open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    if metric == "mse":  # the paper's are of the price, in yuan²
        title += f" ({quantity.MSE_UNITS[comparison.forecast]}; the paper's: the price, yuan²)"
    lines = [
        f"**{title}** — this run, with the paper's figure in brackets",
        "",
        "| model | " + " | ".join(paper.FRAMEWORK_LABELS[f] for f in paper.FRAMEWORKS) + " |",
        "|---|" + "---:|" * len(paper.FRAMEWORKS),
    ]
    for row in rows:
        pairs = [f"{_number(row[i])} (paper {_number(row[i + 1])})" for i in range(1, len(row), 2)]
        lines.append(f"| {row[0]} | " + " | ".join(pairs) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def bar_chart(comparison: Comparison, metric: str, out: Path) -> Path:
    """Ours beside the paper's, per model and framework, on a log scale (they span decades)."""
    name, title, published = TABLES[metric]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    width = 0.8 / len(paper.FRAMEWORKS)
    for axis, (source, values) in zip(axes, _sources(comparison, metric, published), strict=True):
        for i, framework in enumerate(paper.FRAMEWORKS):
            heights = [values(framework, model) for model in paper.MODELS]
            positions = [m + (i - 1) * width for m in range(len(paper.MODELS))]
            bars = axis.bar(
                positions,
                [h if h is not None else 0 for h in heights],
                width,
                label=paper.FRAMEWORK_LABELS[framework],
            )
            for bar, height in zip(bars, heights, strict=True):
                middle = bar.get_x() + width / 2
                if height is None:  # no bar: say so just above the axis
                    axis.text(middle, 0.02, "n/a", ha="center", size=7, transform=bottom(axis))
                else:
                    axis.text(middle, height, _number(height), ha="center", va="bottom", size=7)
        axis.set_xticks(range(len(paper.MODELS)), [paper.MODEL_LABELS[m] for m in paper.MODELS])
        axis.set_yscale("log")
        axis.set_title(source)
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("MSE" if metric == "mse" else "seconds")
    axes[0].legend()
    figure.suptitle(title)
    figure.tight_layout()
    path = out / f"{name}.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def bottom(axis: plt.Axes) -> Any:
    """Coordinates of data along x and of the axes' height along y."""
    return axis.get_xaxis_transform()


Values = Callable[[str, str], float | None]


def _sources(
    comparison: Comparison, metric: str, published: Mapping[str, Mapping[str, float]]
) -> list[tuple[str, Values]]:
    def ours(framework: str, model: str) -> float | None:
        value = comparison.cell(framework, model, metric)
        return value if isinstance(value, float) and math.isfinite(value) else None

    def theirs(framework: str, model: str) -> float | None:
        return float(published[model][framework])

    return [("this run", ours), ("the paper", theirs)]


def convergence_plot(comparison: Comparison, out: Path) -> Path:
    """The federation's global test MSE after each round, one line per model."""
    figure, axis = plt.subplots(figsize=(6.5, 4))
    plotted = False
    for (framework, model), run in sorted(comparison.runs.items()):
        rounds = [r for r in run.get("rounds", []) if r.get("mse") is not None]
        if framework != "federated" or not rounds:
            continue
        axis.plot(
            [r["round"] for r in rounds],
            [r["mse"] for r in rounds],
            marker="o",
            label=paper.MODEL_LABELS.get(model, model),
        )
        plotted = True
    if plotted:
        values = [v for line in axis.get_lines() for v in line.get_ydata()]
        if min(values) > 0 and max(values) / min(values) > 10:  # spans decades
            axis.set_yscale("log")
        axis.margins(y=0.2)
        axis.legend()
    else:
        axis.text(0.5, 0.5, "no federated run finished", ha="center", transform=axis.transAxes)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("round")
    axis.set_ylabel("global test MSE")
    axis.set_title("Federated learning: MSE after each round")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    path = out / "convergence.png"
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def runs_csv(comparison: Comparison, out: Path) -> Path:
    """Every run, including the extra comparisons, with all its timings."""
    timing_names = sorted(
        {name for run in comparison.runs.values() for name in run["final"].get("timings", {})}
    )
    path = out / "runs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["framework", "model", "mse", "train_seconds", *timing_names])
        for (framework, model), run in sorted(comparison.runs.items()):
            final = run["final"]
            timings = final.get("timings", {})
            writer.writerow(
                [framework, model, final["mse"], final["train_seconds"]]
                + [timings.get(name, "") for name in timing_names]
            )
    return path


def _runs_table(comparison: Comparison) -> list[str]:
    lines = [
        "| framework | model | MSE | naive MSE | skill | achieved | training s | whole job s "
        "| notes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (framework, model), run in sorted(comparison.runs.items()):
        final = run["final"]
        timings = final.get("timings", {})
        job = timings.get("job_seconds", timings.get("total_seconds", final.get("wall_seconds")))
        params = ", ".join(f"{k}={v}" for k, v in run.get("params", {}).items())
        lines.append(
            f"| {framework} | {model} | {_number(final['mse'])} | "
            f"{_share(final.get('naive_mse'), '.4g')} | {_share(final.get('skill'), '+.2%')} | "
            f"{_share(final.get('achieved_skill'), '.1%')} | "
            f"{_number(final['train_seconds'])} | {_number(job) if job else ''} | {params} |"
        )
    for (framework, model), reason in sorted(comparison.missing.items()):
        lines.append(f"| {framework} | {model} | {reason} | | | | | | |")
    return lines


def selection_section(comparison: Comparison) -> list[str]:
    """Each run that cross-validated first: its folds, the setting chosen, and its CV MSE."""
    rows = [
        f"| {framework} | {model} | {s['folds']} {s['kind']} | "
        f"{', '.join(f'{k}={v}' for k, v in s['best']['params'].items()) or 'the flags'} | "
        f"{_number(s['best']['cv_mse'])} | {_number(run['final']['mse'])} |"
        for (framework, model), run in sorted(comparison.runs.items())
        if (s := run.get("model_selection")) and s.get("best")
    ]
    if not rows:
        return []
    return [
        "## Model selection",
        "",
        "| framework | model | folds | chosen | cross-validated MSE | test MSE |",
        "|---|---|---|---|---:|---:|",
        *rows,
        "",
    ]


def _share(value: float | None, form: str) -> str:
    return "" if value is None else format(value, form)


def naive_findings(comparison: Comparison) -> list[str]:
    """Which runs do not beat the naive forecast on their own test rows, said plainly."""
    scored = {
        key: run["final"] for key, run in comparison.runs.items() if "naive_mse" in run["final"]
    }
    if not scored:
        return []
    losers = sorted(f"{f} {m}" for (f, m), final in scored.items() if not final["beats_naive"])
    naive = min(final["naive_mse"] for final in scored.values())
    if not losers:
        return [
            f"Every run beats the naive forecast (naive MSE {naive:.6g}; skill in the runs table)."
        ]
    naive_is = (
        "tomorrow's price = the better of today's price and today's close"
        if comparison.forecast == quantity.DEFAULT
        else f"no {comparison.forecast} from today's close"
    )
    return [
        f"{len(losers)} of {len(scored)} runs do not beat the naive forecast ({naive_is}, "
        f"MSE {naive:.6g}): {', '.join(losers)}. Their MSE differences measure noise, not learning."
    ]


def _per_province(comparison: Comparison) -> list[str]:
    keys = sorted(comparison.runs)
    provinces = sorted({p for run in comparison.runs.values() for p in run["final"]["per_client"]})
    lines = [
        "| province | " + " | ".join(f"{f} {m}" for f, m in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for province in provinces:
        cells = []
        for key in keys:
            score = comparison.runs[key]["final"]["per_client"].get(province)
            cells.append(_number(score["mse"]) if score else "")
        lines.append(f"| {province} | " + " | ".join(cells) + " |")
    return lines


def _label(framework: str) -> str:
    return paper.FRAMEWORK_LABELS.get(framework, framework)


def findings(comparison: Comparison) -> list[str]:
    """What the tables say, in words: the winners beside the paper's, and agreements."""
    lines = []
    for model in paper.MODELS:
        for metric, what, published in (
            ("mse", "lowest MSE", paper.TABLE2_MSE),
            ("seconds", "shortest training", paper.TABLE3_SECONDS),
        ):
            ours = {
                f: v
                for f in paper.FRAMEWORKS
                if isinstance(v := comparison.cell(f, model, metric), float)
            }
            if not ours:
                continue
            best = min(ours, key=ours.__getitem__)
            theirs = min(published[model], key=published[model].__getitem__)
            among = "" if len(ours) == len(paper.FRAMEWORKS) else f" ({len(ours)} frameworks ran)"
            lines.append(
                f"{paper.MODEL_LABELS[model]}, {what}: {_label(best)}{among}; "
                f"in the paper, {_label(theirs)}."
            )
    lines += naive_findings(comparison)
    federated, spark = (
        comparison.runs.get(("federated", "lr")),
        comparison.runs.get(("spark", "lr")),
    )
    if federated and spark:
        a, b = federated["final"]["mse"], spark["final"]["mse"]
        same = math.isclose(a, b, rel_tol=1e-6)
        lines.append(
            f"FedAvg of the provinces' LR fits and Spark's row-weighted average of them "
            f"{'give the same model' if same else 'differ'} (MSE {a:.6g} and {b:.6g})."
        )
    for model in paper.MODELS:
        merged, central = (comparison.runs.get((f, model)) for f in ("spark", "centralised"))
        if merged and central and merged["final"]["mse"] > 2 * central["final"]["mse"]:
            ratio = merged["final"]["mse"] / central["final"]["mse"]
            lines.append(
                f"Spark's merged {paper.MODEL_LABELS[model]} has {ratio:.3g}× the centralised "
                "MSE: each province's part learned only its own rows, and where provinces "
                "differ (price levels, here) the merged model fits none of them as well "
                "(see MSE per province)."
            )
    return lines


def _privacy_section(comparison: Comparison, out: Path) -> list[str]:
    """The DP sweep's table and MSE/ε plot, when the run made one."""
    if not comparison.privacy:
        return []
    privacy.write_csv(comparison.privacy, out / "privacy.csv")
    figure = privacy.plot(comparison.privacy, out / "mse-epsilon.png")
    return [
        "## Privacy: MSE against ε",
        "",
        "The federation again, with client-level differential privacy: each province's step "
        "from the global model is clipped to a norm C and Gaussian noise is added, calibrated to "
        "spend ε over all rounds (δ = 1e-5), by the server to the sum under dp-central, by each "
        "province to its own step before sending it under dp-local (more noise in the average "
        "for the same ε); ε = ∞ is the run without DP. LR is "
        "swept as lr-sgd, learnt by gradient steps from zero weights as DP-FedAvg expects (the "
        "exact fit's MSE in one round), beside its own run without DP. The clear MSE is each "
        "run's final model scored here, in the clear, on the union of the provinces' test rows "
        "(this machine made them), with the run's own split, features, target and scaler: "
        "under DP the split's cutoff and the scaler come from noised counts and sums, so the "
        "test rows can differ by a few days between runs, and the naive forecast's MSE and the "
        "skill are on each run's own rows. The recorded MSE is the one the run's results hold: "
        "under DP the one DP releases, each province's MSE clipped per row to B "
        "(`--dp-score-clip`, 1 by default), noised, clamped into [0, B], pooled, which says "
        "little of the model at small ε (a release of 0 is possible); without DP the clear "
        "score the provinces sent. The plot shows the clear MSE.",
        "",
        *privacy.table(comparison.privacy),
        "",
        f"![MSE against ε]({figure.name})",
        "",
    ]


def analysis_section(comparison: Comparison) -> list[str]:
    """What each province is worth, what the model leans on, and what personalising gains, for
    the federated runs that analysed their final model (server/analysis.py)."""
    lines = []
    for (framework, model), run in sorted(comparison.runs.items()):
        value, ranked, personal = (
            run.get(k) for k in ("contributions", "importance", "personalisation")
        )
        if framework != "federated" or not (value or ranked or personal):
            continue
        lines += [f"### {paper.MODEL_LABELS.get(model, model)}", ""]
        if value and "error" in value:
            lines += [f"Contributions: {value['error']}.", ""]
        elif value:
            share = (value["mse_empty"] - value["mse_all"]) / len(value["shapley"])
            lines += [
                f"Contributions to the global test MSE ({_number(value['mse_all'])} with every "
                f"province, {_number(value['mse_empty'])} with none: "
                f"{value['baseline'].removeprefix('the empty coalition ')}). Positive: the "
                f"province lowers the MSE. Shapley over {value['permutations']} orders of the "
                "provinces; it sums to the fall from none to all.",
                "",
                "| province | leave-one-out | Shapley | ± s.e. | vs an equal share |",
                "|---|---:|---:|---:|---:|",
                *(
                    f"| {p} | {value['leave_one_out'][p]:+.4g} | {v:+.6g} | "
                    f"{value['shapley_std_error'][p]:.2g} | {v - share:+.3g} |"
                    for p, v in value["shapley"].items()
                ),
                "",
            ]
        if ranked:
            lines += [
                f"Permutation importance: the rise of the global test MSE "
                f"({_number(ranked['base_mse'])}) when each province shuffles one feature's "
                f"column of its test rows ({ranked['repeats']} repeats).",
                "",
                "| feature | MSE rise | ± s.d. |",
                "|---|---:|---:|",
                *(
                    f"| {f} | {score['importance']:+.4g} | {score['std']:.2g} |"
                    for f, score in ranked["features"].items()
                ),
                "",
            ]
        if personal:
            lines += [
                f"Personalisation: {personal['method']}; the fine-tuned model never leaves its "
                "province.",
                "",
                "| province | global MSE | personalised MSE |",
                "|---|---:|---:|",
                *(
                    f"| {p} | {_number(s['global_mse'])} | {_number(s['personal_mse'])} |"
                    for p, s in [*personal["per_client"].items(), ("overall", personal)]
                ),
                "",
            ]
    return ["## Contributions, explainability and personalisation", "", *lines] if lines else []


def write_report(comparison: Comparison, out: Path, agreement: Sequence[str] = ()) -> Path:
    """All files of the comparison, and report.md that shows them top to bottom, with the
    agreement section (`baselines.agreement`) after the tables."""
    out.mkdir(parents=True, exist_ok=True)
    tables = {metric: write_table(comparison, metric, out) for metric in TABLES}
    charts = {metric: bar_chart(comparison, metric, out) for metric in TABLES}
    convergence = convergence_plot(comparison, out)
    runs_csv(comparison, out)
    lines = [
        "# Federated, centralised and Spark learning on Chinese A-share prices",
        "",
        "A reproduction of the seed paper's comparison (its Tables 2 and 3) with fedstock: the "
        "same rows, split and scaling for all three frameworks.",
        "",
        "## Setup",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in comparison.setup.items()),
        "",
        "## What this run shows",
        "",
        *(f"- {line}" for line in findings(comparison)),
        "",
        "## Table 2: MSE",
        "",
        tables["mse"][1].read_text(),
        f"![Table 2 as bars]({charts['mse'].name})",
        "",
        "## Table 3: training time",
        "",
        tables["seconds"][1].read_text(),
        f"![Table 3 as bars]({charts['seconds'].name})",
        "",
        *agreement,
        "## Federated convergence",
        "",
        f"![MSE per round]({convergence.name})",
        "",
        *selection_section(comparison),
        *_privacy_section(comparison, out),
        *analysis_section(comparison),
        "## Every run",
        "",
        *_runs_table(comparison),
        "",
        "## MSE per province",
        "",
        *_per_province(comparison),
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in comparison.notes),
        "",
        "Files: `table2_mse.csv`, `table3_seconds.csv`, `runs.csv` (every run with all its "
        "timings), `privacy.csv` (the DP sweep: clear and recorded MSE per point) and "
        "`results/*.json` (each run's results file).",
        "",
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
