"""benchmarks/gpu.py works before a GPU is lent: its --smoke run takes every row and the
reproduce check through the CPU with a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_smoke_run(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--json", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert len(rows) == 8 and {"full, adamw_8bit", "qlora nf4 r16 all-linear, checkpointing"} <= rows.keys()
    for name, runs in rows.items():
        (run,) = runs
        assert run["tokens_per_s"] > 0 and 0 < run["mfu"] < 1, name
        assert run["memory_estimate_bytes"] > 0 and run["optimizer_state_bytes"] > 0, name
    assert (
        rows["full, adamw_8bit"][0]["optimizer_state_bytes"] < rows["full, adamw"][0]["optimizer_state_bytes"]
    )
    assert report["reproduce"]["ok"] and "reproduced exactly" in report["reproduce"]["output"]
    assert done.stdout.count("\n| ") == 8 + 1  # the table: a header and a line per row
