"""A results file as a table a person can read: MSE per province and overall, and the time taken."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def format_summary(results: dict[str, Any]) -> str:
    final = results.get("final")
    lines = [
        f"model {results['model']} ({results['setting']} setting), {len(results['rounds'])} rounds"
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
    width = max(len(p) for p in [*final["per_client"], "province"])
    lines += ["", f"{'province':<{width}}  {'test rows':>10}  {'MSE':>12}"]
    for province, score in final["per_client"].items():
        lines.append(f"{province:<{width}}  {score['n_test']:>10}  {score['mse']:>12.6g}")
    total = sum(score["n_test"] for score in final["per_client"].values())
    lines += [
        f"{'overall':<{width}}  {total:>10}  {final['mse']:>12.6g}",
        "",
        f"training time (first round to final metrics): {final['train_seconds']:.2f} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if len(paths) != 1:
        print("usage: python -m server.summary RESULTS.json", file=sys.stderr)
        return 2
    print(format_summary(json.loads(Path(paths[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
