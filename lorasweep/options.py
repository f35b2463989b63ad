"""The command-line options several `lorasweep` commands share (Typer's Annotated options), and
the config fields they set.

Their defaults are the constants of the modules that own them (the storage URL in study.py, the
space in search_space.py, the artifact store in artifacts.py), so `--help` and the code agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def overrides(
    model: str | None, domain: str | None, general: str | None, probes: str | None, trust: bool
) -> dict:
    """Config fields given on the command line; they replace the space's or the config file's."""
    given = {"model": model, "domain": domain, "general": general, "probes": probes}
    return {k: v for k, v in given.items() if v is not None} | ({"trust_remote_code": True} if trust else {})


CacheDir = Annotated[
    Path | None,
    typer.Option(help="Where base models are cached (default: $LORASWEEP_CACHE_DIR or results/cache)."),
]
ArtifactDir = Annotated[
    Path,
    typer.Option(help="Artifact store for trial configs and report plots (optuna-dashboard --artifact-dir)."),
]
Model = Annotated[
    str | None,
    typer.Option(
        help="Base model: a local Hugging Face directory or a hub id in the local cache (default: the embedded world's)."
    ),
]
Domain = Annotated[
    str | None,
    typer.Option(help="Domain text to inject: .jsonl/.json/.csv/.parquet/.txt or hub:NAME?split=S."),
]
General = Annotated[str | None, typer.Option(help="General text: replay pool and the forgetting measure.")]
Probes = Annotated[
    str | None, typer.Option(help="Probes on the domain: rows {question, answer} or {prompt, answer}.")
]
TrustRemoteCode = Annotated[
    bool, typer.Option("--trust-remote-code", help="Run Python code shipped with the model.")
]
StudyName = Annotated[
    str | None, typer.Option("--study", help="Study name (optional if the storage holds one).")
]
Storage = Annotated[str, typer.Option("--storage", help="Optuna storage URL.")]
TrialNumber = Annotated[int | None, typer.Option("--trial", help="Trial number.")]
Best = Annotated[
    bool,
    typer.Option("--best", help="The best feasible trial (constrained) or the Pareto front's top learner."),
]

NewStudy = Annotated[str, typer.Option(help="Study name.")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON on stdout).")]

# optimize's own
SpaceFile = Annotated[Path, typer.Option(help="Search-space YAML file.")]
NTrials = Annotated[int, typer.Option(help="Trials this run adds to the study, across its workers.")]
Timeout = Annotated[float | None, typer.Option(help="Stop starting trials after SECONDS.")]
Seed = Annotated[int, typer.Option(help="Sampler seed (offset by the trials already run).")]
HeartbeatInterval = Annotated[int, typer.Option(help="Seconds between a running trial's heartbeats.")]
GracePeriod = Annotated[
    int, typer.Option(help="Seconds without a heartbeat after which a trial's worker counts as dead.")
]
StorageWait = Annotated[
    float,
    typer.Option(
        help="Seconds to wait out an unreachable storage (a database restart) before stopping with exit 75."
    ),
]
Workers = Annotated[
    int, typer.Option(help="Worker processes on this machine, sharing --n-trials and the cores.")
]
Replicates = Annotated[
    int,
    typer.Option(
        help="After the search, train each arm's leaders with other seeds, up to this many (0: none)."
    ),
]
Devices = Annotated[
    str | None,
    typer.Option(
        help="GPUs, one per worker (fsdp_shards per worker for sharded trials), e.g. 0,1,2,3 "
        "(sets CUDA_VISIBLE_DEVICES)."
    ),
]

# confirm's own
Top = Annotated[int, typer.Option(help="Leaders per arm to replicate: the arm's front, by learn.")]
Seeds = Annotated[int, typer.Option(help="Replicates per leader (other seeds), counting those it has.")]

# report's, reproduce's, export's, dashboard's and run's own
ReportOut = Annotated[Path | None, typer.Option(help="Output directory (default: results/<study>).")]
ForgetTolerance = Annotated[
    float | None, typer.Option(help="Forgetting tolerance (default: the study's own, if it has one).")
]
Tolerance = Annotated[
    float | None,
    typer.Option(help="Largest accepted difference per metric (default: 0 on CPU, 0.02 on a GPU)."),
]
AllowChanged = Annotated[
    bool, typer.Option("--allow-changed", help="Re-run even if the data or base weights changed.")
]
ExportOut = Annotated[Path, typer.Option(help="Directory to write the model, trial.yaml and README.md into.")]
Merge = Annotated[bool, typer.Option("--merge", help="Merge the adapter into the base; save a full model.")]
Host = Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 exposes the dashboard to the network.")]
Port = Annotated[int, typer.Option(help="Port to serve on.")]
ConfigFile = Annotated[Path, typer.Option(help="Trial config YAML (the format every trial records).")]
