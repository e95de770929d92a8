"""Patient-index matching bench: precision, recall, review share and throughput.

    .venv/bin/python bench/mpi.py [--persons 10000 100000] [--link X --review Y] [--seed 7]
                                  [--no-sweep] [--write docs/benchmarks-mpi.md]

Records of fixtures/mpi_population.py arrive in a shuffled (deterministic) order. Each one is
matched against everything seen before: LINK joins the candidate's cluster, REVIEW is counted
(and, for scoring, left unlinked: a steward has not decided yet), NEW starts a cluster. Pairwise
precision/recall compare pairs inside predicted clusters with pairs inside true persons.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exchange.mpi.matching import (  # noqa: E402
    DEFAULT_LINK_THRESHOLD,
    DEFAULT_REVIEW_THRESHOLD,
    Matcher,
    Outcome,
)
from fixtures.mpi_population import generate  # noqa: E402


def _pairs(sizes) -> int:
    return sum(s * (s - 1) // 2 for s in sizes)


def evaluate(clusters: dict[str, str], truth: dict[str, int]) -> tuple[float, float, float, int, int, int]:
    """Pairwise precision, recall, F1 (and TP, predicted pairs, true pairs) via cluster sizes."""
    predicted = _pairs(Counter(clusters.values()).values())
    actual = _pairs(Counter(truth.values()).values())
    tp = _pairs(Counter((clusters[r], truth[r]) for r in clusters).values())
    precision = tp / predicted if predicted else 1.0
    recall = tp / actual if actual else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1, tp, predicted, actual


def run(records, truth, link: float, review: float) -> dict:
    matcher = Matcher(link=link, review=review)
    clusters: dict[str, str] = {}
    persons_in: dict[str, set[int]] = {}  # cluster -> true persons in it (to score reviews)
    reviews = review_true = 0
    started = time.perf_counter()
    cpu_started = time.process_time()
    for r in records:
        outcome, cluster, score = matcher.match(r)
        if outcome is Outcome.LINK:
            new = matcher.add(r, cluster)
        else:
            if outcome is Outcome.REVIEW:
                reviews += 1
                review_true += truth[r.record_id] in persons_in.get(cluster, ())
            new = matcher.add(r)
        clusters[r.record_id] = new
        persons_in.setdefault(new, set()).add(truth[r.record_id])
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    p, rc, f1, tp, pred, actual = evaluate(clusters, truth)
    sizes = matcher.candidates_compared
    ordered = sorted(sizes)
    return {
        "precision": p, "recall": rc, "f1": f1, "tp": tp, "predicted_pairs": pred,
        "true_pairs": actual, "false_pairs": pred - tp, "review": reviews,
        "review_share": reviews / len(records), "review_true": review_true,
        "records_per_s": len(records) / elapsed, "seconds": elapsed,
        # CPU time of this process: what the matcher costs when the machine is shared.
        "records_per_cpu_s": len(records) / cpu if cpu else 0.0,
        "block_mean": statistics.fmean(sizes), "block_p99": ordered[int(0.99 * (len(ordered) - 1))],
        "block_max": ordered[-1], "records": len(records),
    }


def sweep(records, truth, pairs: list[tuple[float, float]]) -> list[dict]:
    """Re-run the stream for each (link, review) pair (decisions depend on earlier links)."""
    out = []
    for link, review in pairs:
        res = run(records, truth, link, review)
        res.update(link=link, review_threshold=review)
        out.append(res)
    return out


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"nproc {os.cpu_count()}, CPU {cpu}, Python {platform.python_version()}"


def fmt(res: dict) -> str:
    return (f"precision {100 * res['precision']:.3f} %  recall {100 * res['recall']:.2f} %  "
            f"F1 {100 * res['f1']:.2f} %  review {100 * res['review_share']:.2f} % "
            f"({res['review']} records, {res['review_true']} true matches)  "
            f"false pairs {res['false_pairs']}  {res['records_per_s']:,.0f} records/s "
            f"({res['records_per_cpu_s']:,.0f} per CPU-second)  "
            f"candidates/record mean {res['block_mean']:.1f} p99 {res['block_p99']} max {res['block_max']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--link", type=float, default=DEFAULT_LINK_THRESHOLD)
    ap.add_argument("--review", type=float, default=DEFAULT_REVIEW_THRESHOLD)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--sweep", default="20:12,21:14,22:14,22.5:14,23:14,24:16,26:16",
                    help="link:review pairs for the sweep table")
    ap.add_argument("--write", metavar="PATH", help="write a Markdown report")
    args = ap.parse_args(argv)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"Machine: {machine()}, load average at start {load:.1f}",
             f"Thresholds: link {args.link}, review {args.review}"]
    print(lines[0])
    print(lines[1])
    report = []
    for n in args.persons:
        t0 = time.perf_counter()
        pop = generate(n, seed=args.seed)
        gen_s = time.perf_counter() - t0
        records = list(pop.records)
        random.Random(args.seed).shuffle(records)
        res = run(records, pop.truth, args.link, args.review)
        head = (f"N = {n:,} persons, {len(records):,} records (generated in {gen_s:.1f} s), "
                f"{res['true_pairs']:,} true pairs")
        print(head)
        print("  " + fmt(res))
        sweep_rows = []
        if not args.no_sweep:
            grid = [tuple(float(x) for x in pair.split(":")) for pair in args.sweep.split(",")]
            print(f"  {'link':>5} {'review':>6} {'precision':>10} {'recall':>8} {'review %':>9} {'false pairs':>12}")
            for row in sweep(records, pop.truth, grid):
                sweep_rows.append(row)
                print(f"  {row['link']:>5} {row['review_threshold']:>6} {100 * row['precision']:>9.3f}% "
                      f"{100 * row['recall']:>7.2f}% {100 * row['review_share']:>8.2f}% {row['false_pairs']:>12}")
        report.append((n, len(records), gen_s, res, sweep_rows))
    if args.write:
        _write(Path(args.write), lines, report, args, argv)
    return 0


def _write(path: Path, lines, report, args, argv) -> None:
    cmd = ".venv/bin/python bench/mpi.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = ["# Patient-index matching benchmark", "",
           "Date: 2026-11-28  ", f"{lines[0]}  ", f"Command: `{cmd.strip()}`", "",
           "Population: `fixtures/mpi_population.py` (seed %d); records matched one by one in a "
           "shuffled order by `exchange.mpi.matching.Matcher` (single process). Review outcomes are "
           "scored as not linked. Pairwise precision/recall over all record pairs." % args.seed, "",
           f"Thresholds: link ≥ {args.link}, review ≥ {args.review}.", "",
           "| persons | records | precision | recall | F1 | review share | review (true matches) | false pairs | records/s (wall) | records per CPU-second | candidates/record mean / p99 / max |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, nrec, _gen, res, _rows in report:
        out.append(f"| {n:,} | {nrec:,} | {100 * res['precision']:.3f} % | {100 * res['recall']:.2f} % | "
                   f"{100 * res['f1']:.2f} % | {100 * res['review_share']:.2f} % | {res['review']} ({res['review_true']}) | "
                   f"{res['false_pairs']} | {res['records_per_s']:,.0f} | {res['records_per_cpu_s']:,.0f} | {res['block_mean']:.1f} / {res['block_p99']} / {res['block_max']} |")
    for n, _nrec, _gen, _res, rows in report:
        if not rows:
            continue
        out += ["", f"Threshold sweep, N = {n:,} persons:", "",
                "| link | review | precision | recall | review share | false pairs |", "|---:|---:|---:|---:|---:|---:|"]
        for row in rows:
            out.append(f"| {row['link']} | {row['review_threshold']} | {100 * row['precision']:.3f} % | "
                       f"{100 * row['recall']:.2f} % | {100 * row['review_share']:.2f} % | {row['false_pairs']} |")
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
