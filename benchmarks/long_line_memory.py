"""Peak memory of one tokenize job over a text file that is one huge line, as the line grows.

A document is held as text and tokenized `TOKENIZE_PIECE_CHARS` characters at a time ("pieces"); "whole"
makes the piece as large as the document (one pass of the tokenizer), side by side in the same run. Each job runs in a
process of its own (peak resident memory from `resource`); the text is words drawn at random, GPT-2 BPE.

    python benchmarks/long_line_memory.py --mb 5 20 --out results/benchmarks/long-line-memory
"""

from __future__ import annotations

import argparse
import random
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from capture_speed import ROOT, write_results  # noqa: E402

JOB = """
import sys
from neuron_census.data import corpus
from neuron_census.jobs.census import tokenize_job
if sys.argv[2] == "whole":
    corpus.TOKENIZE_PIECE_CHARS = 1 << 40
spec = {"source": "files", "paths": [sys.argv[1]], "seq_len": 128, "sequences_per_shard": 64, "n_shards": 1,
        "max_document_chars": 1 << 30}
tokenize_job("gpt2", {"source": "gpt2_bpe"}, "line", spec, 0, sys.argv[3])
import resource
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def one_line(path: Path, chars: int) -> None:
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(5000)]
    text = " ".join(rng.choice(words) for _ in range(chars // 5))[:chars]
    path.write_text(text + "\n")


def measure(path: Path, mode: str, out: Path) -> tuple[float, float]:
    """(seconds, peak resident MB) of one tokenize job in a fresh process."""
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", JOB, str(path), mode, str(out)], cwd=ROOT, capture_output=True, text=True)
    if child.returncode != 0:
        raise RuntimeError(child.stderr[-2000:])
    return time.perf_counter() - start, int(child.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, nargs="+", default=[5, 20])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mb in args.mb:
            path = Path(tmp) / f"line-{mb}.txt"
            one_line(path, int(mb * 1e6))
            for mode in ("pieces", "whole"):
                seconds, peak = measure(path, mode, Path(tmp) / f"{mode}-{mb}.zarr")
                rows.append({"line_mb": mb, "mode": mode, "seconds": round(seconds, 1), "peak_mb": round(peak)})
                print(rows[-1], flush=True)
    lines = ["| line (MB) | tokenized | seconds | peak resident MB |", "|---:|---|---:|---:|"]
    lines += [f"| {r['line_mb']:g} | {r['mode']} | {r['seconds']} | {r['peak_mb']} |" for r in rows]
    print("\n".join(lines))
    if args.out is not None:
        write_results(args.out, "\n".join(lines) + "\n", {"rows": rows})


if __name__ == "__main__":
    main()
