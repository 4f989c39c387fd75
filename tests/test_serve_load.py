"""Bounded load on loopback: 8 clients upload the hippocampus case and run the model at once
against a real ``delineo serve`` (2 workers, 4 waiting places). Nothing is lost (8 studies, 8
masks), the server's memory stays bounded, jobs past the limit show "busy, queued" or are
refused with 503 + Retry-After and succeed when retried, and the API keeps answering quickly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from .serve_fixtures import CASE, serve_models  # noqa: F401,E402
from .test_serve_e2e import ARTIFACTS, free_port  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.soak
def test_eight_concurrent_uploads_and_runs(tmp_path, serve_models):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "delineo.cli", "serve", "--models", str(serve_models),
                             "--workspace", str(tmp_path / "ws"), "--port", str(port), "--workers", "2",
                             "--max-queued", "4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = re.search(r"(http://\S+)\?token=(\S+)", proc.stdout.readline())
        assert url
        base, token = url.group(1).rstrip("/"), url.group(2)
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(100):
            try:
                httpx.get(f"{base}/api/info", headers=headers, timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        model = httpx.get(f"{base}/api/models", headers=headers).json()[0]["id"]
        rss0 = rss_mb(proc.pid)
        peak = [rss0]
        seen_states: set[str] = set()
        messages: set[str] = set()
        refused = [0]
        latencies: list[float] = []
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak.append(rss_mb(proc.pid))
                t0 = time.perf_counter()
                jobs = httpx.get(f"{base}/api/jobs", headers=headers, timeout=30).json()
                latencies.append(time.perf_counter() - t0)
                for j in jobs:
                    seen_states.add(j["state"])
                    messages.add(j["message"])
                time.sleep(0.05)

        results: list[dict] = []

        def client(i: int):
            with httpx.Client(headers=headers, timeout=120) as c:
                r = c.post(f"{base}/api/studies", files={"files": (f"case{i}.nii.gz", CASE.read_bytes())})
                assert r.status_code == 201, r.text
                sid = r.json()["id"]
                while True:
                    r = c.post(f"{base}/api/studies/{sid}/run", json={"model": model})
                    if r.status_code == 503:
                        assert "busy" in r.json()["detail"] and r.headers["retry-after"]
                        refused[0] += 1
                        time.sleep(0.5)
                        continue
                    assert r.status_code == 202, r.text
                    break
                jid = r.json()["id"]
                while (job := c.get(f"{base}/api/jobs/{jid}").json())["state"] not in ("done", "failed"):
                    time.sleep(0.1)
                results.append(job)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()

        assert len(results) == 8 and all(j["state"] == "done" for j in results), [j["message"] for j in results]
        studies = httpx.get(f"{base}/api/studies", headers=headers).json()
        assert len(studies) == 8
        masks = sum(len(httpx.get(f"{base}/api/studies/{s['id']}/masks", headers=headers).json()) for s in studies)
        assert masks == 8
        assert "queued" in seen_states and any(m.startswith("busy, queued") for m in messages), messages
        growth = max(peak) - rss0
        report = (f"8 clients: wall {wall:.1f} s, job seconds {sorted(round(j['seconds'], 2) for j in results)}, "
                  f"refused-then-retried {refused[0]}, server RSS start {rss0:.0f} MB peak {max(peak):.0f} MB, "
                  f"API latency under load median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms "
                  f"max {max(latencies) * 1000:.0f} ms\n")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "load.txt").write_text(report)
        print(report)
        assert growth < 1500, report  # bounded: 2 workers' worth of small cases, not 8 piled up
        assert max(latencies) < 5, report
    finally:
        proc.terminate()
        proc.wait(10)
