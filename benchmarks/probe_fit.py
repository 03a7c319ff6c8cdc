"""How long does sparse probing take per (feature, layer), against k? Three questions, one table each, on
synthetic activations of realistic shape with a planted feature:

  1. rankings and probes: per method (all but `optimal`) the ranking's seconds, once per (feature, layer),
     and the probe's seconds per k. Timed piece by piece on the scaled training rows: `rank_neurons`, then
     the probe (`probing._probe`: the balanced L2 logistic fit on the top-k neurons plus its predictions on
     the test rows, exactly the span that probe_sweep's `seconds` covers for these methods);
  2. `optimal`, the integer program: seconds and solver status of `optimal_support` per k, by number of
     rows, candidates and time limit;
  3. the whole `probe_sweep` per (feature, layer) (scaling, every ranking, every probe, the integer
     programs, the metrics), wall clock, under named settings (SETTINGS): `default` (ProbeSettings()),
     `cheap` (max_mip_k 3, candidates 20), `short-ladder` (k in 1, 2, 3, 4, 6, 8, 16, 32, 64, 384, max_mip_k
     3, candidates 20, time limit 10 s), `lean` (short-ladder's ks without mutual_information and optimal)
     and `minimal` (mean_difference, f_statistic and random at k in 1, 2, 4, 8, 16).

Question 3 runs before question 2: where a `default` sweep ran at (n, --mip-neurons), question 2 takes its
(n, candidates 50, time limit 60) row from that sweep's `optimal` rows (their `seconds`: the program, the
support's linear program and a probe of at most 8 neurons, ~10 ms) instead of solving the same programs again.

Data: n labelled spans (the caller's 70/30 stratified split, `split_rows`, so 0.7 n training rows) of N
neurons, `--positive-share` of them positive (0.5: the pipeline's balanced subsample). Pre-activations are
N(-0.5, 1); on the positives `--effects` are added to as many randomly chosen carrier neurons (Cohen's d in
pre-activation units, so the classes overlap and no single neuron separates them); activations are the GELU
of that. One seeded numpy generator per (seed, n, N), so every question sees the same data at a size.

    python benchmarks/probe_fit.py --out results/benchmarks/probe-fit
    python benchmarks/probe_fit.py --quick           # under a minute
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import erf
from threadpoolctl import threadpool_info, threadpool_limits

from neuron_census.analyses import probing
from neuron_census.analyses.probing import (
    METHODS,
    ProbeSettings,
    _probe,
    complete_ranking,
    default_ks,
    optimal_support,
    probe_sweep,
    rank_neurons,
    scale_neurons,
    split_rows,
)

RANKED = tuple(m for m in METHODS if m != "optimal")
SHORT_LADDER = (1, 2, 3, 4, 6, 8, 16, 32, 64, 384)
SETTINGS = {
    "default": ProbeSettings(),
    "cheap": ProbeSettings(max_mip_k=3, candidates=20),
    "short-ladder": ProbeSettings(ks=SHORT_LADDER, max_mip_k=3, candidates=20, time_limit=10.0),
    "lean": ProbeSettings(methods=("mean_difference", "f_statistic", "l1_logistic", "linear_svm", "random"), ks=SHORT_LADDER),
    "minimal": ProbeSettings(methods=("mean_difference", "f_statistic", "random"), ks=(1, 2, 4, 8, 16)),
}
STATUS = {"optimal": "opt", "time limit": "TL", "iteration limit": "IL"}


@dataclasses.dataclass(frozen=True)
class Data:
    train_x: np.ndarray  # raw activations of the training rows
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    scaled_train: np.ndarray  # as probe_sweep sees them (scale_neurons)
    scaled_test: np.ndarray
    carriers: np.ndarray


def planted(n: int, n_neurons: int, seed: int, effects: list[float], positive_share: float) -> Data:
    """n spans of N neurons with the feature carried by len(effects) neurons (module docstring), split and
    scaled as the pipeline does."""
    rng = np.random.default_rng([seed, n, n_neurons])
    y = np.zeros(n, dtype=bool)
    y[: round(n * positive_share)] = True
    rng.shuffle(y)
    pre = rng.normal(-0.5, 1.0, size=(n, n_neurons))
    carriers = rng.choice(n_neurons, size=len(effects), replace=False)
    pre[np.ix_(y, carriers)] += np.asarray(effects, dtype=np.float64)
    x = pre * 0.5 * (1.0 + erf(pre / np.sqrt(2.0)))
    train, test = split_rows(y, ProbeSettings())
    scaled_train, scaled_test = scale_neurons(x[train], x[test])
    return Data(x[train], y[train], x[test], y[test], scaled_train, scaled_test, carriers)


def warm_up() -> None:
    """One small probe and ranking of each kind first, so imports and first-call costs stay out of the timings."""
    data = planted(200, 16, 0, [1.0], 0.5)
    settings = ProbeSettings()
    for method in RANKED:
        rank_neurons(method, data.scaled_train, data.train_y, settings)
    _probe(data.scaled_train, data.train_y, data.scaled_test, settings)
    optimal_support(data.scaled_train, data.train_y, 1, candidates=4, time_limit=5.0)


def question_rankings(data: Data, ks: list[int], repeats: int) -> list[dict[str, Any]]:
    """Per method: ranking seconds, probe seconds per k (k <= N; the least of `repeats` runs each) and how many
    of the carriers the ranking puts in its top len(carriers)."""
    settings = ProbeSettings()
    n_neurons = data.scaled_train.shape[1]
    rows = []
    for method in RANKED:
        rank_seconds, ranking = float("inf"), None
        for _ in range(repeats):
            start = time.perf_counter()
            ranking, _status = rank_neurons(method, data.scaled_train, data.train_y, settings)
            rank_seconds = min(rank_seconds, time.perf_counter() - start)
        probe_seconds: dict[int, float] = {}
        for k in sorted({k for k in ks if k <= n_neurons} | {n_neurons}):
            used = ranking[:k]
            best = float("inf")
            for _ in range(repeats):
                start = time.perf_counter()
                _probe(data.scaled_train[:, used], data.train_y, data.scaled_test[:, used], settings)
                best = min(best, time.perf_counter() - start)
            probe_seconds[k] = best
        found = len(set(ranking[: len(data.carriers)].tolist()) & set(data.carriers.tolist()))
        rows.append({"method": method, "rank_seconds": rank_seconds, "probe_seconds": probe_seconds, "carriers_found": found})
    return rows


def question_mip(data: Data, ks: list[int], candidates: int, time_limit: float) -> list[dict[str, Any]]:
    """Per k: seconds, status and support of optimal_support on the scaled training rows (as probe_sweep calls it)."""
    rows = []
    for k in ks:
        start = time.perf_counter()
        support, status, objective = optimal_support(data.scaled_train, data.train_y, k, candidates=candidates, time_limit=time_limit)
        seconds = time.perf_counter() - start
        used = complete_ranking(support, data.scaled_train, data.train_y)[:k]  # the neurons probe_sweep's probe uses
        rows.append({"k": k, "seconds": seconds, "status": status, "used": sorted(used.tolist()), "objective": objective})
        print(f"  mip n_train={len(data.train_y)} candidates={candidates} limit={time_limit:g} k={k}: {seconds:.2f} s, {status}", flush=True)
    return rows


def question_sweep(data: Data, settings: ProbeSettings) -> dict[str, Any]:
    """Wall seconds of one probe_sweep, and per method the sum of its `seconds` column and its rows."""
    start = time.perf_counter()
    table = probe_sweep(data.train_x, data.train_y, data.test_x, data.test_y, settings)
    wall = time.perf_counter() - start
    per_method = {m: float(table.filter(table["method"] == m)["seconds"].sum()) for m in settings.methods}
    optimal = table.filter(table["method"] == "optimal")
    return {
        "wall_seconds": wall, "probes": table.height, "column_seconds": per_method,
        "optimal": [{"k": int(r["k"]), "seconds": float(r["seconds"]), "status": r["solver_status"], "used": sorted(r["neurons"][: r["k"]])}
                    for r in optimal.iter_rows(named=True)],
        "best_f1": float(table["f1"].max()),
    }


def _cell(seconds: float, status: str, differs: bool) -> str:
    word = STATUS.get(status, status)
    return f"{seconds:.2f} {word}{' *' if differs else ''}"


def render(args: argparse.Namespace, results: dict[str, Any]) -> str:
    out: list[str] = []
    ladder = args.ks
    # 1
    out.append(
        "Question 1: ranking seconds once per (feature, layer), and probe seconds per k (rank_neurons and the probe "
        "timed directly; the probe is the span of probe_sweep's `seconds`)"
        + (f", least of {args.repeats} runs" if args.repeats > 1 else ", one run")
        + f"; carriers: planted neurons in the ranking's top {len(args.effects)}\n"
    )
    head = ["n spans", "N", "method", "ranking s", *[f"k={k}" for k in ladder], "k=N", "carriers"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|---:|---:|---|" + "---:|" * (len(head) - 3))
    for block in results["rankings"]:
        n_neurons = block["N"]
        for row in block["rows"]:
            probes = row["probe_seconds"]
            cells = [f"{probes[k]:.3f}" if k in probes and k != n_neurons else "-" for k in ladder]
            out.append(
                f"| {block['n']} | {n_neurons} | {row['method']} | {row['rank_seconds']:.3f} | " + " | ".join(cells)
                + f" | {probes[n_neurons]:.3f} | {row['carriers_found']}/{len(args.effects)} |"
            )
    # 2
    out.append(
        f"\nQuestion 2: `optimal_support` seconds and status per k (N = {args.mip_neurons}; opt = optimal, TL = time "
        "limit reached, best support kept; * = support differs from the longest limit's at that k)\n"
    )
    head = ["n spans", "candidates", "time limit s", *[f"k={k}" for k in args.mip_ks], "total s"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|---:|---:|---:|" + "---:|" * (len(head) - 3))
    for case in results["mip"]:
        reference = case.get("reference")
        cells = []
        for i, row in enumerate(case["rows"]):
            differs = reference is not None and reference[i]["used"] != row["used"]
            cells.append(_cell(row["seconds"], row["status"], differs))
        total = sum(r["seconds"] for r in case["rows"])
        source = " (from the default sweep)" if case.get("from_sweep") else ""
        out.append(f"| {case['n']} | {case['candidates']} | {case['time_limit']:g}{source} | " + " | ".join(cells) + f" | {total:.1f} |")
    for case in results["mip_skipped"]:
        out.append(f"| {case['n']} | {case['candidates']} | {case['time_limit']:g} | " + " | ".join("not run" for _ in args.mip_ks) + " | - |")
    # 3
    out.append(
        "\nQuestion 3: one whole probe_sweep per (feature, layer), wall seconds; the methods' shares are the sums of "
        "their `seconds` column (probe fits, plus the integer programs for optimal; rankings other than optimal's "
        "are outside it); x 320: 40 features x 8 layers one after another\n"
    )
    head = ["setting", "n spans", "N", "probes", "wall s", "x 320 s", "optimal s (statuses)", "other methods' probes s",
            "rest s (rankings)", "best F1"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for case in results["sweeps"]:
        r = case["result"]
        statuses = ", ".join(STATUS.get(o["status"], o["status"]) for o in r["optimal"])
        optimal = f"{r['column_seconds']['optimal']:.1f} ({statuses})" if "optimal" in r["column_seconds"] else "-"
        others = sum(v for m, v in r["column_seconds"].items() if m != "optimal")
        out.append(
            f"| {case['setting']} | {case['n']} | {case['N']} | {r['probes']} | {r['wall_seconds']:.2f} | "
            f"{320 * r['wall_seconds']:.0f} | {optimal} | {others:.2f} | {r['wall_seconds'] - sum(r['column_seconds'].values()):.2f} | "
            f"{r['best_f1']:.3f} |"
        )
    return "\n".join(out) + "\n"


def _sweep_spec(text: str) -> tuple[str, int, int]:
    setting, n, n_neurons = text.split(":")
    if setting not in SETTINGS:
        raise argparse.ArgumentTypeError(f"unknown setting {setting!r}; known: {list(SETTINGS)}")
    return setting, int(n), int(n_neurons)


def _mip_case(text: str) -> tuple[int, int, float]:
    n, candidates, limit = text.split(":")
    return int(n), int(candidates), float(limit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 4000], help="n labelled spans (questions 1 and 2)")
    parser.add_argument("--neurons", type=int, nargs="+", default=[384, 2048, 8192], help="N neurons (question 1)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 64, 256], help="probe sizes below N (k = N is always timed)")
    parser.add_argument("--repeats", type=int, default=1, help="question 1: the least of this many runs of each piece")
    parser.add_argument("--mip-neurons", type=int, default=384, help="N of question 2 (the program sees only the candidates)")
    parser.add_argument("--mip-ks", type=int, nargs="+", default=list(range(1, 9)))
    parser.add_argument("--candidates", type=int, nargs="+", default=[50, 20])
    parser.add_argument("--time-limits", type=float, nargs="+", default=[60.0, 5.0], help="the first is the reference of the * marks")
    parser.add_argument("--mip-skip", type=_mip_case, nargs="*", default=[(4000, 50, 60.0)],
                        help="n:candidates:time_limit cases of question 2 not run (too long for one run)")
    parser.add_argument("--sweeps", type=_sweep_spec, nargs="+",
                        default=[_sweep_spec(s) for s in ("default:1000:384", "cheap:1000:384", "cheap:4000:384", "short-ladder:1000:384",
                                                          "lean:1000:384", "lean:4000:384", "lean:1000:2048", "minimal:1000:384",
                                                          "minimal:4000:384")],
                        help="setting:n:N per whole probe_sweep of question 3; settings: " + ", ".join(SETTINGS))
    parser.add_argument("--questions", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    parser.add_argument("--effects", type=float, nargs="+", default=[1.5, 1.0, 0.75, 0.5], help="Cohen's d of each carrier neuron")
    parser.add_argument("--positive-share", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blas-threads", type=int, default=None,
                        help="threadpoolctl limit of BLAS and OpenMP threads (default: the libraries' own, one per core)")
    parser.add_argument("--quick", action="store_true", help="small sizes, under a minute")
    parser.add_argument("--out", type=Path, default=None, help="writes <out>.md (the tables) and <out>.json (every number)")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.neurons, args.ks, args.repeats = [400], [384], [1, 4, 16, 64], 1
        args.mip_ks, args.candidates, args.time_limits, args.mip_skip = [1, 2, 3], [20], [5.0, 0.5], []
        args.sweeps = [("short-ladder", 400, 384), ("lean", 400, 384), ("minimal", 400, 384)]

    with threadpool_limits(args.blas_threads):
        run(args)


def run(args: argparse.Namespace) -> None:
    began = time.perf_counter()
    warm_up()
    cache: dict[tuple[int, int], Data] = {}

    def data(n: int, n_neurons: int) -> Data:
        if (n, n_neurons) not in cache:
            cache.clear()  # one size in memory at a time (8192 neurons x 4000 rows is 262 MB)
            cache[(n, n_neurons)] = planted(n, n_neurons, args.seed, args.effects, args.positive_share)
        return cache[(n, n_neurons)]

    results: dict[str, Any] = {"rankings": [], "mip": [], "mip_skipped": [], "sweeps": []}
    if 1 in args.questions:
        for n in args.rows:
            for n_neurons in args.neurons:
                start = time.perf_counter()
                rows = question_rankings(data(n, n_neurons), args.ks, args.repeats)
                results["rankings"].append({"n": n, "N": n_neurons, "rows": rows})
                print(f"question 1, n={n} N={n_neurons}: {time.perf_counter() - start:.1f} s", flush=True)
    if 3 in args.questions:
        for setting, n, n_neurons in args.sweeps:
            result = question_sweep(data(n, n_neurons), SETTINGS[setting])
            results["sweeps"].append({"setting": setting, "n": n, "N": n_neurons, "result": result})
            print(f"question 3, {setting} n={n} N={n_neurons}: {result['wall_seconds']:.2f} s", flush=True)

    if 2 in args.questions:
        default = SETTINGS["default"]

        def reused(n: int, candidates: int, time_limit: float) -> list[dict[str, Any]] | None:
            """The default sweep's optimal rows at (n, --mip-neurons), when they answer this case for every k."""
            if (candidates, time_limit) != (default.candidates, default.time_limit) or max(args.mip_ks) > default.max_mip_k:
                return None
            for case in results["sweeps"]:
                if case["setting"] == "default" and (case["n"], case["N"]) == (n, args.mip_neurons):
                    return [row for row in case["result"]["optimal"] if row["k"] in args.mip_ks]
            return None

        skip = {(n, c, float(t)) for n, c, t in args.mip_skip}
        for n in args.rows:
            for candidates in args.candidates:
                reference = None
                for time_limit in args.time_limits:
                    if (n, candidates, time_limit) in skip:
                        results["mip_skipped"].append({"n": n, "candidates": candidates, "time_limit": time_limit})
                        continue
                    swept = reused(n, candidates, time_limit)
                    rows = swept or question_mip(data(n, args.mip_neurons), args.mip_ks, candidates, time_limit)
                    case = {"n": n, "candidates": candidates, "time_limit": time_limit, "rows": rows, "from_sweep": bool(swept)}
                    if reference is None:
                        reference = rows
                    else:
                        case["reference"] = reference
                    results["mip"].append(case)
    table = render(args, results)
    total = time.perf_counter() - began
    pools = ", ".join(f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info())
    table = f"threads: {pools}; whole run {total:.0f} s\n\n" + table
    print(f"\nwhole run: {total:.0f} s\n")
    print(table)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {name: {**dataclasses.asdict(s)} for name, s in SETTINGS.items()}
        payload = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "settings": settings,
                   "threadpools": [{k: i[k] for k in ("internal_api", "version", "num_threads")} for i in threadpool_info()],
                   "default_ks_384": list(default_ks(384)), "seconds": total,
                   "probing_sha256": hashlib.sha256(Path(probing.__file__).read_bytes()).hexdigest(), **results}
        (args.out.parent / f"{args.out.name}.json").write_text(json.dumps(payload, indent=1, default=str))
        (args.out.parent / f"{args.out.name}.md").write_text(table)


if __name__ == "__main__":
    main()
