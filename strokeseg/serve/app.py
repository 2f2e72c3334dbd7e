"""``strokeseg serve``: the web app's server: a page, its static files and one JSON API under ``/api/``.

The API (the page uses it; a script can too):

- ``GET /api/info``: the channels a case must have (one file each), what the input must be, the
  research-use notice, the upload limit and the planes;
- ``POST /api/cases`` (multipart form, one file field per channel, named by the channel): 202 with
  the new case's random id and queue position; 400 (missing, extra or empty fields), 411 (no
  ``Content-Length``), 413 (over the upload limit);
- ``GET /api/cases/{id}``: status (queued, reading, predicting, fusing, writing, done, failed), the
  step in words, the queue position, the one-line error of a failed case, and once done the result
  (:func:`strokeseg.serve.pipeline.run_case`) with the URLs of its files;
- ``GET /api/cases/{id}/files/{name}``: the stored scans and the mask, lesion table and overlay.
  Unknown ids and names are 404, whoever asks.

Safe by default: the server binds to 127.0.0.1 unless told otherwise (and then warns); with a
token (``--token``) every ``/api/`` request needs ``Authorization: Bearer <token>`` or
``?token=<token>``; uploads are capped; one case is predicted at a time
(:class:`strokeseg.serve.worker.CaseWorker`, models loaded once, in Keras safe mode, before the
server accepts anything); case files live in a private temporary folder, are removed after the
retention time and when the server stops; a content-security policy keeps the page on its own origin.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from strokeseg.data.grid_plan import GridPlan
from strokeseg.infer import predict
from strokeseg.serve.cases import FINISHED, MASK, OVERLAY, TABLE, CaseStore
from strokeseg.serve.command import DEFAULT_MAX_UPLOAD_MB, DEFAULT_RETENTION_MINUTES
from strokeseg.serve.worker import CaseWorker

log = logging.getLogger("strokeseg.serve")

NOTICE = "Research software, not for clinical use."
EXPIRY_INTERVAL_S = 60.0
STATIC = resources.files("strokeseg.serve") / "static"
# The page and NiiVue need nothing else: no inline script or style, no other origin.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                           "worker-src 'self' blob:; connect-src 'self' data: blob:; object-src 'none'; "
                           "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def input_statement(plan: GridPlan) -> str:
    """What a case must be, in one sentence, from the models' grid plan."""
    files = ("one 3-D NIfTI file (.nii or .nii.gz)" if len(plan.channels) == 1 else
             f"one 3-D NIfTI file (.nii or .nii.gz) per channel ({', '.join(plan.channels)}), all on one grid")
    grid = f"{'x'.join(map(str, plan.shape))} voxels of {'x'.join(f'{s:g}' for s in plan.spacing)} mm"
    if plan == predict.MNI_T1_PLAN:
        return (f"A T1-weighted MRI, {files}, registered to MNI152NLin2009aSym ({grid}); a scan on another "
                "grid is resampled onto it through its world coordinates, which assumes that registration.")
    files = files[0].upper() + files[1:]
    if plan.kind == "fixed":
        return f"{files}, on the grid the models were trained on ({grid}); another grid is resampled onto it."
    return f"{files}; it is reoriented and resampled to the models' voxel size ({grid}) and the mask back."


@dataclass
class ServerState:
    store: CaseStore
    worker: CaseWorker
    plan: GridPlan
    token: str | None
    max_upload_mb: float

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def create_app(models_dir: Path, *, token: str | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               retention_minutes: float = DEFAULT_RETENTION_MINUTES, work_dir: Path | None = None,
               batch_size: int = predict.DEFAULT_BATCH_SIZE) -> Starlette:
    """The app for one models folder, its models already loaded (a bad folder fails here, not later)."""
    if max_upload_mb <= 0 or retention_minutes <= 0:
        raise predict.UsageError("the upload limit and the retention time must be > 0")
    plan = predict.models_plan(models_dir)
    predictor = predict.load_predictor(models_dir, predict.folder_options(models_dir, batch_size), plan=plan)
    store = CaseStore(work_dir, retention_minutes * 60.0)
    state = ServerState(store, CaseWorker(store, predictor, plan), plan, token or None, max_upload_mb)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        state.worker.start()
        janitor = asyncio.create_task(_expire_periodically(state.store))
        log.info("case files in %s, kept %.0f minutes after a case finishes", store.root, retention_minutes)
        try:
            yield
        finally:
            janitor.cancel()
            await run_in_threadpool(state.worker.stop)
            state.store.close()

    routes = [Route("/", _page), Route("/api/info", _info), Route("/api/cases", _create, methods=["POST"]),
              Route("/api/cases/{case_id}", _status), Route("/api/cases/{case_id}/files/{name}", _file),
              Mount("/static", StaticFiles(directory=str(STATIC)), name="static")]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(BaseHTTPMiddleware, dispatch=_guard)])
    app.state.server = state
    return app


async def _expire_periodically(store: CaseStore) -> None:
    while True:
        await asyncio.sleep(EXPIRY_INTERVAL_S)
        await run_in_threadpool(store.expire)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _guard(request: Request, call_next) -> Response:
    """The token check of ``/api/`` (``/api/info`` holds nothing private: it tells the page whether a
    token is needed) and the security headers of every response."""
    state: ServerState = request.app.state.server
    if request.url.path.startswith("/api/") and request.url.path != "/api/info" and state.token is not None:
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
        if not secrets.compare_digest(given.encode(), state.token.encode()):
            return _error(401, "a valid access token is required (Authorization: Bearer <token> or ?token=)")
    response = await call_next(request)
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def _page(request: Request) -> Response:
    return FileResponse(str(STATIC / "index.html"), media_type="text/html")


async def _info(request: Request) -> JSONResponse:
    state: ServerState = request.app.state.server
    return JSONResponse({"channels": list(state.plan.channels), "channel_kinds": list(state.plan.channel_kinds),
                         "input": input_statement(state.plan), "notice": NOTICE,
                         "max_upload_mb": state.max_upload_mb,
                         "planes": list(state.worker.predictor.predictors), "token_required": state.token is not None})


async def _create(request: Request) -> JSONResponse:
    state: ServerState = request.app.state.server
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        return _error(411, "the upload needs a Content-Length")
    if int(length) > state.max_upload_bytes:
        return _error(413, f"the upload is larger than the limit of {state.max_upload_mb:g} MB")
    channels = list(state.plan.channels)
    try:
        # A few more parts than channels are parsed, so that an extra field gets its own message.
        form = await request.form(max_files=len(channels) + 4, max_fields=len(channels) + 4)
    except Exception as exc:  # noqa: BLE001 - multipart parsing faults are the client's
        return _error(400, f"not a readable multipart form ({' '.join(str(exc).split())[:200]})")
    try:
        given = list(form.keys())
        missing = [c for c in channels if c not in given]
        extra = [k for k in given if k not in channels]
        if missing or extra:
            return _error(400, f"a case needs one file per channel: {', '.join(channels)}"
                               + (f"; missing {', '.join(missing)}" if missing else "")
                               + (f"; not a channel of these models: {', '.join(extra)}" if extra else ""))
        uploads = {}
        for channel in channels:
            upload = form[channel]
            if isinstance(upload, str):
                return _error(400, f"{channel}: expected a file, got a text field")
            content = await upload.read()
            if not content:
                return _error(400, f"{channel}: the file is empty")
            uploads[channel] = (content, upload.filename)
    finally:
        await form.close()
    record = await run_in_threadpool(state.store.create, uploads)
    position = state.worker.submit(record)
    log.info("case %s queued at position %d", record.id, position)
    return JSONResponse({"id": record.id, "status": "queued", "position": position}, status_code=202)


async def _status(request: Request) -> JSONResponse:
    state: ServerState = request.app.state.server
    record = state.store.get(request.path_params["case_id"])
    if record is None:
        return _error(404, "no such case (it may have expired)")
    body = state.store.snapshot(record)
    body["position"] = state.worker.position(record.id)
    if body["result"] is not None:
        base = f"/api/cases/{record.id}/files"
        files = {"scan": f"{base}/{record.scans[state.plan.channels[0]].name}",
                 "mask": f"{base}/{MASK}", "table": f"{base}/{TABLE}", "overlay": f"{base}/{OVERLAY}"}
        body["result"] = {**body["result"], "files": files,
                          "scans": {c: f"{base}/{p.name}" for c, p in record.scans.items()}}
    body["finished"] = body["status"] in FINISHED
    return JSONResponse(body)


async def _file(request: Request) -> Response:
    state: ServerState = request.app.state.server
    case_id, name = request.path_params["case_id"], request.path_params["name"]
    path = state.store.file(case_id, name)
    if path is None:
        return _error(404, "no such file")
    media = {".gz": "application/gzip", ".nii": "application/octet-stream", ".csv": "text/csv",
             ".png": "image/png"}[path.suffix]
    return FileResponse(str(path), media_type=media, filename=f"{case_id}_{name}")


# ------------------------------------------------------------------------------------ running it
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(models_dir: Path, host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    """Load the models, then serve until interrupted (uvicorn)."""
    import uvicorn

    app = create_app(models_dir, **options)
    if not is_loopback(host):
        log.warning("LISTENING ON %s:%d: every machine that can reach this address can upload scans and read "
                    "results%s", host, port, "" if options.get("token") else " (no --token given)")
    log.info("serving %s on http://%s:%d/", models_dir, host if ":" not in host else f"[{host}]", port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
