"""`lorasweep dashboard`: optuna-dashboard on the study, checked through its HTTP API and a browser."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml
from conftest import TINY_SPACE, invoke


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, cache_dir):
    """A one-trial study with a report, served by `lorasweep dashboard` on a free port."""
    path = tmp_path_factory.mktemp("dash")
    (path / "space.yaml").write_text(yaml.safe_dump(TINY_SPACE, sort_keys=False))
    url = f"sqlite:///{path}/s.db"
    artifacts = str(path / "artifacts")
    common = ("--storage", url, "--artifact-dir", artifacts)
    for args in (("optimize", "--space", "space.yaml", "--n-trials", "1", "--replicates", "0"), ("report",)):
        result = invoke(*args, *common, cwd=path)
        assert result.returncode == 0, result.stderr
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "lorasweep", "dashboard", *common, "--port", str(port)],
        cwd=path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/studies", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"dashboard did not start: {server.stdout.read()}")
            time.sleep(0.5)
    yield base, path
    server.terminate()
    server.wait(timeout=10)


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_the_api_serves_the_study_with_metrics_attrs_and_artifacts(served):
    base, _ = served
    (summary,) = get(f"{base}/api/studies")["study_summaries"]
    detail = get(f"{base}/api/studies/{summary['study_id']}?after=0")
    assert detail["name"] == "default" and detail["objective_names"] == ["learn", "forget"]
    assert detail["has_intermediate_values"]
    (trial,) = [t for t in detail["trials"] if t["state"] == "Complete"]  # the other baseline waits
    attrs = {a["key"] for a in trial["user_attrs"]}
    assert {"learn", "forget", "config", "data_fingerprint", "base_fingerprint", "peak_mem_bytes"} <= attrs
    assert [a["filename"] for a in trial["artifacts"]] == ["trial.yaml"]
    assert {"report.md", "pareto.png"} <= {a["filename"] for a in detail["artifacts"]}
    artifact = trial["artifacts"][0]["artifact_id"]
    with urllib.request.urlopen(
        f"{base}/artifacts/{summary['study_id']}/{trial['trial_id']}/{artifact}"
    ) as r:
        assert yaml.safe_load(r.read())["method"] in ("full", "lora")


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="chromium is not installed (.ci/run installs it)"
)
def test_a_headless_browser_renders_the_study(served, request):
    base, _ = served
    page = f"{base}/dashboard/studies/1"
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000"]
    dom = subprocess.run(
        [*browser, "--dump-dom", page], capture_output=True, text=True, timeout=120, check=False
    )
    assert "default" in dom.stdout and "learn" in dom.stdout, dom.stderr[-2000:]
    screenshot = request.config.rootpath / "results" / "test-artifacts" / "dashboard.png"  # for CI to keep
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [*browser, f"--screenshot={screenshot}", "--window-size=1400,900", page], timeout=120, check=True
    )
    assert screenshot.stat().st_size > 10_000
