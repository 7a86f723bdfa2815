"""The baseline: a plain Celery task per sample, the way most projects start.

Default Celery settings (prefork pool, one process per core, JSON), the sample as a JSON
list, ONNX Runtime loaded once per pool process. Run as a worker with

    python -m inferfleet.bench.naive REDIS_URL
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from celery import Celery

TASK_NAME = "naive.predict"
QUEUE = "naive"
_sessions: dict[str, Any] = {}


def make_naive_app(redis_url: str) -> Celery:
    """A Celery app with default settings but JSON, as the Celery docs recommend."""
    app = Celery("naive", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    task_default_queue=QUEUE, broker_connection_retry_on_startup=True)
    app.task(name=TASK_NAME)(predict)
    return app


def predict(model_path: str, sample: list[Any]) -> list[float]:
    """Probabilities for one sample; the session is built once per pool process."""
    import onnxruntime as ort  # the baseline's own model code, as a user would write it

    session = _sessions.get(model_path)
    if session is None:
        session = _sessions[model_path] = ort.InferenceSession(model_path)
    name = session.get_inputs()[0].name
    row = np.asarray(sample, dtype=np.float32)[None]  # a batch of one
    return [float(v) for v in session.run(["probabilities"], {name: row})[0][0]]


def main(argv: list[str]) -> None:
    """Run the baseline worker: `naive.py REDIS_URL`; sessions load on first use, after
    prefork's fork (a session made before a fork is not safe to use after it)."""
    [redis_url] = argv
    make_naive_app(redis_url).worker_main(["worker", "--loglevel=WARNING", f"-Q{QUEUE}",
                                           "--hostname=naive@%h"])


if __name__ == "__main__":
    main(sys.argv[1:])
