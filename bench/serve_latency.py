#!/usr/bin/env python3
"""Seconds from upload to result in ``strokeseg serve`` against ``strokeseg predict`` on the same file,
and the server's memory while idle and while predicting.

One run, on one 197×233×189 T1-like volume on the MNI grid and a models folder of three untrained
full-width RAX-Nets (an untrained model predicts as fast as a trained one):

1. ``python -m strokeseg predict`` on the file, as a user runs it for one case: the whole process
   (start, TensorFlow import, model loading, the case, exit), timed from outside;
2. ``python -m strokeseg serve`` started once (its start-up time is printed apart: the models are
   loaded then, not per case); the same file uploaded ``--cases`` times, one after the other, each
   timed from the upload request to the poll that sees ``done``;
3. the server's resident memory (``VmRSS``) once idle after start-up, and its peak (``VmHWM``) after
   the cases, from ``/proc/<pid>/status``.

Targets: upload-to-result ≤ 1.2 × predict's seconds; peak RSS ≤ 2 GB idle and predicting.

    python bench/serve_latency.py [--cases 3] [--port 8765]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def write_inputs(folder: Path) -> tuple[Path, Path]:
    """(models folder of three untrained RAX-Nets, a T1-like volume on the MNI grid)."""
    import nibabel as nib

    from strokeseg.config import PLANES
    from strokeseg.data import planes, resample
    from strokeseg.models import build_model

    models = folder / "models"
    models.mkdir()
    for plane in PLANES:
        canvas = planes.canvas_for(resample.MNI_SHAPE, plane).shape
        build_model("raxnet", (*canvas, 1)).save(models / f"{plane}.keras")
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in resample.MNI_SHAPE], indexing="ij"))
    head = (grid ** 2).sum(axis=0) < 0.8
    t1 = np.where(head, 600 + 60 * np.random.default_rng(0).standard_normal(resample.MNI_SHAPE), 0)
    scan = folder / "case_T1w.nii.gz"
    nib.save(nib.Nifti1Image(t1.astype(np.float32), resample.MNI_AFFINE), scan)
    return models, scan


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def memory_gb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in GB (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024 ** 2
    return fields


def multipart(field: str, path: Path) -> tuple[bytes, str]:
    boundary = secrets.token_hex(16)
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{path.name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


def upload_to_result(base: str, scan: Path) -> float:
    body, content_type = multipart("t1w", scan)
    request = urllib.request.Request(f"{base}/api/cases", data=body, headers={"Content-Type": content_type})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        case = json.loads(response.read())["id"]
    while True:
        status = get_json(f"{base}/api/cases/{case}")
        if status["status"] in ("done", "failed"):
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    if status["status"] != "done":
        raise SystemExit(f"the case failed: {status['error']}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3, help="uploads to the running server (default 3)")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        folder = Path(tmp)
        models, scan = write_inputs(folder)
        command = [sys.executable, "-m", "strokeseg"]
        start = time.perf_counter()
        subprocess.run([*command, "predict", str(scan), "--models", str(models), "--output", str(folder / "out"),
                        "--quiet"], check=True, cwd=ROOT)
        predict_seconds = time.perf_counter() - start
        print(f"strokeseg predict, one case, whole process: {predict_seconds:6.1f} s", flush=True)

        port = args.port or free_port()
        base = f"http://127.0.0.1:{port}"
        start = time.perf_counter()
        server = subprocess.Popen([*command, "serve", "--models", str(models), "--port", str(port), "--quiet"],
                                  cwd=ROOT)
        try:
            while True:
                try:
                    get_json(f"{base}/api/info")
                    break
                except OSError:
                    if server.poll() is not None:
                        raise SystemExit("the server exited") from None
                    time.sleep(0.2)
            print(f"strokeseg serve start-up (models loaded once):  {time.perf_counter() - start:6.1f} s")
            time.sleep(2.0)
            idle = memory_gb(server.pid)
            print(f"server idle: RSS {idle['VmRSS']:.2f} GB, peak so far {idle['VmHWM']:.2f} GB", flush=True)
            seconds = [upload_to_result(base, scan) for _ in range(args.cases)]
            for k, value in enumerate(seconds, start=1):
                print(f"upload to result, case {k}: {value:6.1f} s = {value / predict_seconds:.2f} x predict")
            after = memory_gb(server.pid)
            print(f"server peak RSS while predicting: {after['VmHWM']:.2f} GB (RSS now {after['VmRSS']:.2f} GB)")
            median = float(np.median(seconds))
            print(f"median upload to result {median:.1f} s = {median / predict_seconds:.2f} x predict "
                  f"(target <= 1.2); peak RSS {after['VmHWM']:.2f} GB (target <= 2)")
        finally:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
