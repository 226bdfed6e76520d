"""A results file as a table a person can read: MSE per province and overall beside the naive
forecast's, and the time taken."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from common import quantity
from common.forecast import score_table
from server.disclosure import table


def format_summary(results: dict[str, Any]) -> str:
    final = results.get("final")
    lines = [
        f"model {results['model']} ({results['setting']} setting), {len(results['rounds'])} rounds",
        quantity.label(quantity.of(results)),
    ]
    for record in results["rounds"]:
        mse = "n/a" if record["mse"] is None else f"{record['mse']:.6g}"
        lines.append(
            f"  round {record['round']}: {len(record['clients'])} clients, MSE {mse}, "
            f"{record['seconds']:.3f} s, server overhead {record['overhead_seconds'] * 1000:.1f} ms"
        )
    stats = results.get("statistics")
    if stats:
        *features, target = stats["columns"]
        correlation = [row[-1] for row in stats["pearson"][:-1]]
        pairs = ", ".join(f"{f} {c:+.3f}" for f, c in zip(features, correlation, strict=True))
        lines.append(f"  Pearson correlation with the {target} ({stats['rows']:,} rows): {pairs}")
    if not final:
        lines.append("no final result: the run did not finish (see the server's log)")
        return "\n".join(lines)
    lines += ["", *score_table(final)]
    lines += [
        "",
        f"training time (first round to final metrics): {final['train_seconds']:.2f} s",
    ]
    if "disclosure" in results:
        lines += ["", *table(results["disclosure"])]
    return "\n".join(lines + format_analysis(results))


def format_analysis(results: dict[str, Any]) -> list[str]:
    """The end-of-run analysis' sections, those the run asked for (server/analysis.py)."""
    run = results.get("analysis")
    if not run:
        return []
    if "error" in run:
        return ["", f"analysis failed: {run['error']}"]
    lines = []
    value = results.get("contributions")
    if value and "error" in value:
        lines += ["", f"contributions: {value['error']}"]
    elif value:
        width = max(len(p) for p in [*value["shapley"], "province"])
        lines += [
            "",
            f"contributions to the global test MSE (round {value['round']}'s updates; "
            f"all provinces {value['mse_all']:.6g}, none {value['mse_empty']:.6g}: "
            f"{value['baseline'].removeprefix('the empty coalition ')})",
            f"{'province':<{width}}  {'leave-one-out':>13}  {'Shapley':>11}  {'± s.e.':>9}  "
            f"{'vs equal share':>14}",
        ]
        share = (value["mse_empty"] - value["mse_all"]) / len(value["shapley"])
        for province, shapley in value["shapley"].items():
            lines.append(
                f"{province:<{width}}  {value['leave_one_out'][province]:>+13.4g}  "
                f"{shapley:>+11.5g}  {value['shapley_std_error'][province]:>9.2g}  "
                f"{shapley - share:>+14.3g}"
            )
        lines.append(
            f"(positive: the province lowers the MSE; Shapley over {value['permutations']} "
            f"orders of {value['coalitions']} coalitions, summing to the fall from none to all; "
            "an equal share is that fall over the provinces)"
        )
    ranked = results.get("importance")
    if ranked:
        lines += [
            "",
            f"permutation importance: rise of the global test MSE "
            f"({ranked['base_mse']:.6g}) when a feature's column is shuffled, "
            f"{ranked['repeats']} repeats",
        ]
        width = max(len(f) for f in ranked["features"])
        for feature, score in ranked["features"].items():
            lines.append(
                f"  {feature:<{width}}  {score['importance']:>+12.5g} ± {score['std']:.2g}"
            )
    personal = results.get("personalisation")
    if personal:
        width = max(len(p) for p in [*personal["per_client"], "province"])
        lines += [
            "",
            f"personalisation: {personal['method']}",
            f"{'province':<{width}}  {'global MSE':>12}  {'personalised':>12}",
        ]
        rows = [*personal["per_client"].items(), ("overall", personal)]
        for province, score in rows:
            lines.append(
                f"{province:<{width}}  {score['global_mse']:>12.6g}  {score['personal_mse']:>12.6g}"
            )
    return [
        *lines,
        "",
        f"analysis: {run['seconds']:.2f} s, one phase over {len(run['provinces'])} provinces",
    ]


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if len(paths) != 1:
        print("usage: python -m server.summary RESULTS.json", file=sys.stderr)
        return 2
    print(format_summary(json.loads(Path(paths[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
