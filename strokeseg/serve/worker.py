"""One prediction at a time: a thread that owns the loaded models and works through a queue of cases.

The models are loaded once, when the server starts (:func:`strokeseg.infer.predict.load_predictor`,
Keras safe mode); cases wait in arrival order and report their queue position. A fault of the
case's own files fails that case with its one-line message (the server's folder never appears in
it); anything unexpected fails the case with the error's kind, is logged with its traceback, and the
worker goes on with the next case.
"""
from __future__ import annotations

import logging
import queue
import threading

from strokeseg.data.grid_plan import GridPlan
from strokeseg.errors import StrokesegError
from strokeseg.infer.tri_planar import TriPlanarPredictor
from strokeseg.serve.cases import CaseRecord, CaseStore
from strokeseg.serve.pipeline import run_case

log = logging.getLogger("strokeseg.serve")


class CaseWorker:
    def __init__(self, store: CaseStore, predictor: TriPlanarPredictor, plan: GridPlan):
        self.store, self.predictor, self.plan = store, predictor, plan
        self._queue: queue.Queue[CaseRecord | None] = queue.Queue()
        self._waiting: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="strokeseg-serve-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the case in progress, drop the waiting ones, and end the thread."""
        with self._lock:
            self._waiting.clear()
        self._queue.put(None)
        self._thread.join(timeout)

    def submit(self, record: CaseRecord) -> int:
        """Queue a case; its position (0: next)."""
        with self._lock:
            self._waiting.append(record.id)
            position = len(self._waiting) - 1
        self._queue.put(record)
        return position

    def position(self, case_id: str) -> int | None:
        with self._lock:
            return self._waiting.index(case_id) if case_id in self._waiting else None

    def _loop(self) -> None:
        while True:
            record = self._queue.get()
            if record is None:
                return
            with self._lock:
                if record.id not in self._waiting:     # dropped by stop()
                    continue
                self._waiting.remove(record.id)
            self._process(record)

    def _process(self, record: CaseRecord) -> None:
        def progress(status: str, step: str) -> None:
            self.store.update(record, status=status, step=step)

        try:
            result = run_case(record.id, record.scans, record.folder, self.predictor, self.plan, progress,
                              record.names)
        except StrokesegError as exc:
            message = record.describe(str(exc))
            self.store.update(record, status="failed", step="failed", error=message)
            log.info("case %s failed: %s", record.id, message)
        except Exception as exc:  # noqa: BLE001 - one case never stops the server
            log.exception("case %s: unexpected error", record.id)
            self.store.update(record, status="failed", step="failed",
                              error=f"unexpected error ({exc.__class__.__name__}); the server log has the details")
        else:
            self.store.update(record, status="done", step="done", result=result)
            log.info("case %s done: %d lesion(s), %.2f mL, %.1f s", record.id, result["lesion_count"],
                     result["total_volume_ml"], result["seconds"])
