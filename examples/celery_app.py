"""A Celery app whose tasks generate images: one SyncRuxaClient per worker process.

Every task of a worker process shares that process's client (one scheduler,
one rate controller, one connection pool, whatever the pool: prefork or
threads). ``generate_once`` makes a redelivered task re-attach to the Ruxa
task its killed predecessor created instead of paying for a second one.

Try it against the simulator (three terminals)::

    redis-server --port 6379
    python -m ruxa_async.testing --port 8089 --api-key sk-demo
    RUXA_API_KEY=sk-demo RUXA_BASE_URL=http://127.0.0.1:8089 RUXA_EXAMPLE_FAST_POLL=1 \\
        celery -A celery_app worker --pool prefork --concurrency 4      # from examples/

then ``python examples/celery_app.py 20`` enqueues 20 prompts and prints the
results. For the real service, set RUXA_API_KEY only.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from celery import Celery

from ruxa_async import PollPolicy
from ruxa_async.integrations import celery as ruxa_celery

BROKER = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("celery_app", broker=BROKER, backend=BROKER)
app.conf.update(
    task_acks_late=True,  # a task whose worker process dies is delivered again...
    task_reject_on_worker_lost=True,  # ...at once, not after the visibility timeout
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    result_expires=3600,
)

# The simulator's tasks take a fraction of a second: poll it quickly. Defaults otherwise.
FAST = PollPolicy(first_check=0.1, min_interval=0.1, max_interval=0.5)
ruxa_celery.setup(app, poll=FAST if os.environ.get("RUXA_EXAMPLE_FAST_POLL") == "1" else None)


@app.task(name="generate_image")
def generate_image(prompt: str, model: str = "google/nano-banana") -> dict[str, Any]:
    """Generate one image; a redelivery of this task never creates a second Ruxa task."""
    info = ruxa_celery.generate_once(model, {"prompt": prompt}, timeout=600)
    return {
        "task_id": info.task_id,
        "urls": list(info.result_urls),
        "pid": os.getpid(),
        "client": id(ruxa_celery.get_client()),
        "thread": threading.get_ident(),
    }


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    results = [generate_image.delay(f"a lighthouse at dusk, take {i}") for i in range(count)]
    for result in results:
        print(result.get(timeout=900))
