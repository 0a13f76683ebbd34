"""The registered models as a service under load: ``python -m search.serve`` on localhost, N concurrent clients
sending real demo eval JPEGs for a fixed time, and the same load on ``mlflow models serve`` of the same model.

    python bench/serve.py [--config conf/search.yaml] [--aliases fast,champion] [--clients 1,8,32]
                          [--seconds 20] [--no-mlflow] [--quick] [--results PATH] [key=value ...]

Reads a finished study (``run.dir`` / ``run.study``: ``python -m search.finalize``, and ``python -m
search.distill`` for ``@fast``); trains nothing. Each alias is served by the real command in a process of its own
(a private local Ray), warmed up with one request, then loaded by each number of clients in turn: every client
sends one photo per request (a raw ``image/jpeg`` body; base64 JSON to MLflow's server) as soon as its last one
is answered. Rows: requests/s, images/s, latency p50 / p95 / p99 and errors (an answer other than 200, or none
in 30 s), and for ``search.serve`` the median time a request spent in the replica (the rest is HTTP, Serve's
proxy and the clients), per server, model and clients; and where one photo's time goes inside the model (decode,
face step, network) at batch 1 and at the service's batch.
The clients run on the same machine as the service and take some of its CPU. Every request goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from maskclf import config, photos, predict
from maskclf.errors import InputError, cli
from search.study import settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import append_row, machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SECTION = "Serving: photos over HTTP under load (python -m search.serve, mlflow models serve)"
HEADER = ["date", "machine", "server", "model", "clients", "seconds", "requests/s", "images/s", "p50 ms", "p95 ms",
          "p99 ms", "errors", "in replica p50 ms", "command"]
STAGES = "Serving: where one photo's time goes inside the model (ms per photo)"
REQUEST_TIMEOUT_S = 30  # a request not answered by then counts as an error
STAGE_HEADER = ["date", "machine", "model", "batch", "decode", "face step", "network", "all", "command"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, limit_s: float = 300) -> None:
    import urllib.request

    deadline = time.time() + limit_s
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                out = proc.stdout.read() if proc.poll() is not None else ""
                raise RuntimeError(f"the server did not start: {out[-2000:]}")
            time.sleep(1)


def start(server: str, model_uri: str, cfg_args: list[str], env: dict) -> tuple[subprocess.Popen, str]:
    """One server process for ``model_uri`` on a free loopback port; returns it and its predict URL."""
    port = _port()
    if server == "search.serve":
        cmd = [sys.executable, "-m", "search.serve", *cfg_args, "--model", model_uri, "--port", str(port)]
        health, url = f"http://127.0.0.1:{port}/health", f"http://127.0.0.1:{port}/predict"
    else:
        cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        health, url = f"http://127.0.0.1:{port}/ping", f"http://127.0.0.1:{port}/invocations"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        _wait(health, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _once(url: str, body: bytes, content_type: str) -> None:
    import urllib.request

    req = urllib.request.Request(url, body, {"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=300) as r:
        r.read()


async def _load(url: str, bodies: list[bytes], content_type: str, clients: int, seconds: float) -> dict:
    """``clients`` concurrent clients, each sending its next photo as soon as the last is answered, for
    ``seconds``; latencies of the answered requests, the time each spent in the replica where the answer says
    (``search.serve``'s ``seconds``: decoding, waiting for its batch, the face step and the network), and the
    count of the failed ones."""
    import aiohttp

    latencies: list[float] = []
    inside: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds

    async def client(k: int, session: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = k
        while time.perf_counter() < end:
            t = time.perf_counter()
            try:
                async with session.post(url, data=bodies[i % len(bodies)],
                                        headers={"Content-Type": content_type}) as r:
                    body = await r.read()
                    ok = r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):  # refused, reset, or no answer in REQUEST_TIMEOUT_S
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t)
                spent = json.loads(body).get("seconds") if body.startswith(b"{") else None
                if isinstance(spent, dict):
                    inside.append(spent.get("decode", 0) + spent.get("model", 0))
            else:
                errors += 1
            i += clients

    start_t = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=clients)) as session:
        await asyncio.gather(*(client(k, session) for k in range(clients)))
    return {"latencies": latencies, "inside": inside, "errors": errors, "wall": time.perf_counter() - start_t}


def summary(run: dict) -> dict:
    lat = np.array(run["latencies"]) * 1000
    n = len(lat)
    pct = (lambda q: f"{np.percentile(lat, q):.0f}") if n else (lambda q: "-")
    inside = np.array(run["inside"]) * 1000
    return {"requests/s": f"{n / run['wall']:.1f}", "images/s": f"{n / run['wall']:.1f}", "p50 ms": pct(50),
            "p95 ms": pct(95), "p99 ms": pct(99), "errors": str(run["errors"]),
            "in replica p50 ms": f"{np.percentile(inside, 50):.0f}" if len(inside) else "-", "answered": n}


def stages(model_uri: str, jpegs: list[bytes], batches: list[int]) -> list[dict]:
    """Decode, face step and network of the registered model, timed in this process, in ms per photo."""
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    members = getattr(model, "members", None)
    if members is None:  # a combined model crops per part; its stages are not split here
        return []
    rows = []
    for b in batches:
        sample = [jpegs[i % len(jpegs)] for i in range(b)]
        best = None
        for _ in range(3):
            t0 = time.perf_counter()
            images = photos.decode_all(sample)
            t1 = time.perf_counter()
            crops = predict.crop_images(images, members[0][1], model.device)
            t2 = time.perf_counter()
            predict.predict_crops(members, crops, tta=model.tta, device=model.device)
            t3 = time.perf_counter()
            times = [1000 * (t1 - t0) / b, 1000 * (t2 - t1) / b, 1000 * (t3 - t2) / b, 1000 * (t3 - t0) / b]
            best = times if best is None or times[3] < best[3] else best
        rows.append({"batch": b, "ms": best})
    return rows


@cli
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(config.DEFAULT_CONFIG))
    p.add_argument("--aliases", default="fast,champion", help="the study's model aliases to serve (those registered)")
    p.add_argument("--clients", default="1,8,32", help="concurrent clients, one load per number")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each load")
    p.add_argument("--no-mlflow", action="store_true", help="skip the comparison with mlflow models serve")
    p.add_argument("--quick", action="store_true", help="@champion only, 1 and 4 clients for 3 s each, no MLflow")
    p.add_argument("--results", default=str(Path(__file__).with_name("RESULTS.md")), help="where the rows go")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    cfg = settings.load(args.config, args.overrides)
    aliases = ["champion"] if args.quick else [a.strip() for a in args.aliases.split(",") if a.strip()]
    clients = [1, 4] if args.quick else [int(c) for c in args.clients.split(",")]
    seconds = 3.0 if args.quick else args.seconds
    servers = ["search.serve"] + ([] if args.quick or args.no_mlflow else ["mlflow"])

    from search.tracking import Tracker, tracking_uri

    uri = tracking_uri(cfg)
    tracker = Tracker(uri, cfg.run.study)
    registered = []
    for alias in aliases:
        try:
            v = tracker.client.get_model_version_by_alias(cfg.run.study, alias)
            registered.append((alias, f"models:/{cfg.run.study}@{alias}", v.version))
        except Exception:
            print(f"models:/{cfg.run.study}@{alias} is not registered: skipped", flush=True)
    if not registered:
        raise InputError(f"none of {', '.join('@' + a for a in aliases)} is registered for study '{cfg.run.study}' "
                         f"at {uri}: run python -m search.finalize (and search.distill for @fast) first")
    eval_dir = Path(cfg.data.root) / "eval" / "images"
    jpegs = [f.read_bytes() for f in sorted(eval_dir.glob("*.jpg"))[:64]]
    if not jpegs:
        raise InputError(f"no eval JPEGs in {eval_dir}")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "RAY_ADDRESS": "local"}
    cfg_args = ["--config", args.config, *args.overrides]
    changed = [k for k in ("aliases", "clients", "seconds") if not args.quick and getattr(args, k) != p.get_default(k)]
    flags = [f"--{k} {getattr(args, k):g}" if k == "seconds" else f"--{k} {getattr(args, k)}" for k in changed]
    command = "python bench/serve.py " + " ".join([*(["--quick"] if args.quick else []), *flags,
                                                   *(["--no-mlflow"] if args.no_mlflow else []), *args.overrides])
    today, where = datetime.date.today().isoformat(), machine()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    for alias, model_uri, version in registered:
        name = f"@{alias} (v{version})"
        for row in stages(model_uri, jpegs, [1, 32]):
            cells = [f"{v:.1f}" for v in row["ms"]]
            append_row(STAGES, STAGE_HEADER, [today, where, name, str(row["batch"]), *cells, f"`{command}`"],
                       args.results)
            print(f"{name} batch {row['batch']}: decode / face step / network / all ms per photo: "
                  f"{' / '.join(cells)}", flush=True)
        for server in servers:
            proc, url = start(server, model_uri, cfg_args, env)
            try:
                bodies = jpegs if server == "search.serve" else \
                    [json.dumps({"inputs": [base64.b64encode(j).decode()]}).encode() for j in jpegs]
                kind = "image/jpeg" if server == "search.serve" else "application/json"
                _once(url, bodies[0], kind)  # anything lazy happens before the clock starts
                for n in clients:
                    s = summary(asyncio.run(_load(url, bodies, kind, n, seconds)))
                    cells = [s[k] for k in HEADER[6:13]]
                    append_row(SECTION, HEADER, [today, where, server, name, str(n), f"{seconds:g}", *cells,
                                                 f"`{command}`"], args.results)
                    print(f"{server} {name} {n} clients: " + ", ".join(f"{k} {s[k]}" for k in HEADER[6:13]),
                          flush=True)
            finally:
                stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
