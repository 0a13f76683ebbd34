"""python -m search.serve: the smoke study's registered model on a real Ray Serve on localhost, sent real JPEG bytes."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from PIL import Image

from maskclf import labels
from tests.conftest import SMOKE, copy_run_dir, free_port

ROOT = Path(__file__).resolve().parent.parent


def _request(url: str, body: bytes, content_type: str, method: str = "POST") -> tuple[int, dict | str]:
    """The status and the JSON answer (the raw text where it is not JSON)."""
    req = urllib.request.Request(url, body if method == "POST" else None, {"Content-Type": content_type},
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


@pytest.fixture(scope="module")
def service(smoke_final, tmp_path_factory):
    run_dir = copy_run_dir(smoke_final.run_dir, tmp_path_factory.mktemp("serve") / "runs")
    overrides = [*smoke_final.overrides[:-1], f"run.dir={run_dir}"]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "search.serve", "--config", str(SMOKE), "--port", str(port),
                             *overrides], cwd=ROOT, env={**os.environ, "RAY_ADDRESS": "local"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                status, health = _request(f"{url}/health", b"", "", method="GET")
                if status == 200 and isinstance(health, dict):
                    break  # Serve's proxy answers (404, 503, text) before the application is up
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                pytest.fail(f"search.serve did not start: {proc.stdout.read()[-3000:]}")
            time.sleep(1)
        sub = pd.read_csv(run_dir / "smoke" / "final" / "submission.csv", dtype={"ImageID": str}).head(4)
        photos = [(smoke_final.data / "eval" / "images" / i).read_bytes() for i in sub["ImageID"]]
        yield SimpleNamespace(url=url, proc=proc, health=(status, health), sub=sub, photos=photos,
                              overrides=overrides)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the command stops the service and Ray itself
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_health_names_the_model_it_serves(service):
    status, health = service.health
    assert status == 200 and health["status"] == "ok" and health["model"] == "models:/smoke@champion"
    assert int(health["version"]) >= 1


def test_jpeg_bytes_from_concurrent_clients_get_the_submissions_labels(service):
    """Each photo a request of its own, all at once (batched by the replica), and all in one JSON request."""
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda b: _request(f"{service.url}/predict", b, "image/jpeg"), service.photos))
    assert [s for s, _ in answers] == [200] * 4
    one_each = [a["predictions"][0] for _, a in answers]
    assert [p["label"] for p in one_each] == service.sub["ans"].tolist()  # as finalize voted on them
    assert [p["class"] for p in one_each] == [labels.class_name(v) for v in service.sub["ans"]]
    assert all(1 / 18 <= p["probability"] <= 1 for p in one_each)
    body = json.dumps({"photos": [base64.b64encode(b).decode() for b in service.photos]}).encode()
    status, together = _request(f"{service.url}/predict", body, "application/json")
    assert status == 200 and together["predictions"] == one_each


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (90, 120, 150)).save(buf, "PNG")
    return buf.getvalue()


def test_bad_requests_get_400_with_one_line_and_the_next_request_is_answered(service):
    b64 = base64.b64encode(service.photos[0]).decode()
    bad = {
        "a path": (json.dumps({"photos": ["/etc/passwd"]}).encode(), "application/json",
                   "photo 1: a file path? the model opens no file it is sent: send the photo's bytes, base64-encoded"),
        "garbage bytes": (b"\x00garbage" * 100, "image/jpeg", "photo 1: not a JPEG or PNG image"),
        "an empty body": (b"", "image/jpeg", "empty body: send a JPEG or PNG photo, or JSON {\"photos\": [base64, "
                                             "...]}"),
        "an oversize image": (_png(6000, 5000), "image/png", "photo 1: 6000x5000 pixels, over the limit of "
                                                             "25,000,000"),
        "too many photos": (json.dumps({"photos": [b64] * 65}).encode(), "application/json",
                            "65 photos in one request, over the limit of 64"),
        "an oversize body": (b"\xff" * (48 * 2**20 + 1), "image/jpeg",
                             f"request body of {48 * 2**20 + 1:,} bytes, over the limit of {48 * 2**20:,}"),
        "a second bad photo": (json.dumps({"photos": [b64, "bm90IGFuIGltYWdl"]}).encode(), "application/json",
                               "photo 2: not a JPEG or PNG image"),
    }
    for what, (body, kind, line) in bad.items():
        status, answer = _request(f"{service.url}/predict", body, kind)
        assert (status, answer) == (400, {"error": line}), what
        status, answer = _request(f"{service.url}/predict", service.photos[0], "image/jpeg")
        assert status == 200 and answer["predictions"][0]["label"] == service.sub["ans"].iloc[0], what


def test_ctrl_c_stops_the_service(service):
    os.killpg(service.proc.pid, signal.SIGINT)
    out, _ = service.proc.communicate(timeout=120)
    assert service.proc.returncode == 0, out[-3000:]
    assert "serving models:/smoke@champion (version" in out and out.rstrip().endswith("service stopped")


@pytest.mark.integration
def test_a_taken_port_no_model_or_an_unknown_one_is_refused_with_one_line_before_ray_starts(tmp_path, smoke_data):
    def serve(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "search.serve", "--config", str(SMOKE), *args,
                            f"data.root={smoke_data}", f"run.dir={tmp_path / 'runs'}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
        return lines[0]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert serve("--port", str(taken)).startswith(f"error: --host 127.0.0.1 --port {taken}: cannot listen there")
    assert serve().startswith("error: no MLflow store at sqlite:///")
    assert not (tmp_path / "runs").exists()  # a refused command writes nothing
    from search.tracking import Tracker

    Tracker(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "smoke")  # a study's store, with no model registered
    assert serve().startswith("error: study 'smoke' has no registered model at sqlite:///")
    assert serve("--model", "models:/smoke@champion").startswith("error: --model models:/smoke@champion: no such "
                                                                 "model")
    assert serve("--port", "70000") == "error: --port 70000: choose a port in 1..65535"


@pytest.mark.bench
def test_the_serving_benchmarks_quick_mode_loads_the_service_and_records(service, tmp_path):
    """After the fixture's service stopped: bench/serve.py --quick serves @champion itself and loads it."""
    results = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, "bench/serve.py", "--quick", "--results", str(results), "--config", str(SMOKE),
                        *service.overrides], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = [line.split(" | ") for line in results.read_text().splitlines() if "| search.serve |" in line]
    assert [row[4] for row in rows] == ["1", "4"] and all(row[3].startswith("@champion (v") for row in rows)
    assert all(float(row[7]) > 0 and row[11] == "0" for row in rows)  # images/s, errors
    stages = [line.split(" | ") for line in results.read_text().splitlines() if line.startswith("| 20")
              and len(line.split(" | ")) == 9]
    assert [row[3] for row in stages] == ["1", "32"] and all(float(row[7]) > 0 for row in stages)
