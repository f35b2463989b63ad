"""The committed example report of each claim: run each claim space's own commands, then report.

For every `search_spaces/claims/*.yaml`, runs the `lorasweep ...` commands its header gives
(`# Run:` and `# then:` lines) on one storage, then `lorasweep report --study NAME --out
results/examples/NAME` (unless a `# then:` line already reports), and prints each report's
verdict and findings (docs/claims.md, "Each claim's space and example report"):

    python benchmarks/claim_examples.py                  # all eight, about 40 minutes on 2 cores
    python benchmarks/claim_examples.py rank alpha       # some of them
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
SPACES = ROOT / "search_spaces" / "claims"


def commands(space: Path) -> list[list[str]]:
    """The `lorasweep` commands in the space's header, in order."""
    found = []
    for line in space.read_text().splitlines():
        for mark in ("# Run:", "# then:"):
            if line.startswith(mark):
                found.append(shlex.split(line.removeprefix(mark)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="claim spaces by name (default: all)")
    parser.add_argument("--storage", default="sqlite:///results/bench/claims.db")
    args = parser.parse_args()
    (ROOT / "results" / "bench").mkdir(parents=True, exist_ok=True)
    names = args.names or sorted(p.stem for p in SPACES.glob("*.yaml"))
    for name in names:
        steps = commands(SPACES / f"{name}.yaml")
        if not any(step[1] == "report" for step in steps):
            steps.append(["lorasweep", "report", "--study", name])
        if name in optuna.get_all_study_names(args.storage):  # a fresh study: a rerun is comparable
            optuna.delete_study(study_name=name, storage=args.storage)
        start = time.monotonic()
        for step in steps:
            argv = [sys.executable, "-m", "lorasweep", *step[1:], "--storage", args.storage]
            if step[1] == "report":
                argv += ["--out", f"results/examples/{name}"]
            subprocess.run(argv, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        report = (ROOT / "results" / "examples" / name / "report.md").read_text()
        verdict = report.partition("## Verdict")[2].partition("## Findings")[0].strip() or "(no verdict)"
        print(f"## {name} ({(time.monotonic() - start) / 60:.1f} min)\n\n{verdict}\n", flush=True)


if __name__ == "__main__":
    main()
