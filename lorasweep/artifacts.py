"""Files attached to a study or a trial as Optuna artifacts, which optuna-dashboard shows
(`optuna-dashboard URL --artifact-dir results/artifacts`): each trial's `trial.yaml`, the report.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

DEFAULT_ARTIFACT_DIR = Path("results/artifacts")


def attach(target: optuna.Study | optuna.Trial, files: Iterable[Path], artifact_dir: Path) -> None:
    """Upload `files` to the study or trial `target`, in the store at `artifact_dir`.

    One artifact per file name: a file attached again (a report written again) replaces the
    content of the earlier artifact instead of adding a copy.
    """
    artifact_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(base_path=str(artifact_dir))
    existing = {meta.filename: meta.artifact_id for meta in get_all_artifact_meta(target)}
    for path in files:
        if path.name in existing:
            with path.open("rb") as f:
                store.write(existing[path.name], f)
        else:
            upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=target)
