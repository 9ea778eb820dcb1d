"""How robust the yesno recipe is: wrong words on the held-out files across stand-in conditions
(voice, speed, noise, reverberation, gain: scripts/yesno_standin.py), training seeds and file
splits. The goal (issue 20): at most 1 wrong word in the 240 held-out words of every run.

    python benchmarks/yesno_robustness.py [--conditions default,male-fast] [--seeds 0,1,2]
        [--splits 0,1] [KEY=VALUE ...]        (extra overrides for every run: what is being tried)

Prints one line per run and, at the end, the worst and the median run per condition. Nothing is
timed; each run is a whole default training (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

CONDITIONS = {  # one speaker and room per set, as the real corpus
    "default": {},
    "male-fast": {"voice": "he+m3", "speed": 1.3},
    "female-slow-reverb": {"voice": "he+f2", "speed": 0.8, "reverb": 0.3},
    "klatt-noisy": {"voice": "he+klatt", "noise": 4.0},
    "quiet-m1": {"voice": "he+m1", "gain": 0.2, "noise": 2.0},
    # words run together in a reverberant, noisy room: the hardest set here
    "hard": {"voice": "he+m2", "speed": 1.4, "pause": 0.15, "reverb": 0.5, "noise": 6.0},
    # ... and every word spoken at its own tempo and pitch (+-25 %)
    "hard-jitter": {"voice": "he+m2", "speed": 1.3, "pause": 0.2, "reverb": 0.4, "noise": 6.0, "jitter": 0.25},
    # every word spoken afresh (no held-out word is a copy of a training word, as in the real corpus)
    "unique": {"unique": True, "jitter": 0.1},
    "unique-f2-slow": {"unique": True, "voice": "he+f2", "speed": 0.85, "reverb": 0.3, "noise": 2.0, "jitter": 0.15},
    "unique-m3-noisy": {"unique": True, "voice": "he+m3", "noise": 4.0, "reverb": 0.3, "jitter": 0.15},
    "unique-hard": {
        "unique": True,
        "voice": "he+m2",
        "speed": 1.3,
        "pause": 0.2,
        "reverb": 0.4,
        "noise": 6.0,
        "jitter": 0.25,
    },  # fmt: skip
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--splits", default="0,1")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from yesno_standin import make_standin

    launch = [sys.executable, "-m", "launcher"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="yesno-robust-") as tmp:
        for name in args.conditions.split(","):
            data = Path(tmp) / name
            make_standin(data, files=60, seed=17, **CONDITIONS[name])
            for split in args.splits.split(","):
                for seed in args.seeds.split(","):
                    run = f"{name}-split{split}-seed{seed}"
                    cmd = [*launch, "recipe=yesno", f"data.root={data}", f"data.split_seed={split}",
                           f"run.seed={seed}", f"run.name={run}", f"run.output_dir={tmp}/runs", "log.quiet=true",
                           "--device", "cpu", *args.overrides]  # fmt: skip
                    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ})
                    if r.returncode != 0:
                        print(f"{run}: exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}", flush=True)
                        continue
                    summary = json.loads((Path(tmp) / "runs" / "yesno" / run / "summary.json").read_text())
                    m = summary["final_metrics"]
                    words = 8 * 30  # 30 held-out files (data.val_fraction=0.5) of 8 words
                    wrong = round(m["val/wer"] * words)
                    rows.append((name, wrong))
                    print(f"{run}: {wrong} wrong words of {words} (val/wer {m['val/wer']:.4f}, "
                          f"file_acc {m['val/file_acc']:.3f})", flush=True)  # fmt: skip
    print()
    for name in args.conditions.split(","):
        got = [w for n, w in rows if n == name]
        if got:
            print(f"{name}: worst {max(got)}, median {statistics.median(got)} wrong words over {len(got)} runs")
    worst = max((w for _, w in rows), default=None)
    print(f"all: worst run {worst} wrong words (goal: <= 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
