# Celery next to the cluster pool in `multiproc bench --group cluster`: run by the bench as
# `python3 -c <this file> ...` (no file to install).
#
#   worker URL PROCESSES            a Celery worker: prefork pool, PROCESSES processes
#   bench URL ROUND_TRIPS MAP CHUNK REPS
#                                   the client: prints `name value unit # spread` lines
#
# The broker and the result backend are the Redis at URL, as for the cluster pool.
import statistics
import sys
import time

from celery import Celery

mode, url = sys.argv[1], sys.argv[2]
app = Celery("multiproc_bench", broker=url, backend=url)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="trivial")
def trivial(x):
    return x


def report(name, unit, samples):
    print(
        f"{name} {statistics.median(samples):.6g} {unit} "
        f"# min={min(samples):.6g} max={max(samples):.6g} n={len(samples)}",
        flush=True,
    )


def bench(round_trips, n_map, chunk, reps):
    # The first task waits for the worker to be up.
    trivial.delay(0).get(timeout=60)
    rts, rates = [], []
    for _ in range(reps):
        for i in range(20):
            trivial.delay(i).get(timeout=30)
        t = time.perf_counter()
        for i in range(round_trips):
            trivial.delay(i).get(timeout=30)
        rts.append((time.perf_counter() - t) / round_trips * 1e6)
        t = time.perf_counter()
        out = trivial.chunks(((i,) for i in range(n_map)), chunk).group().apply_async()
        got = out.get(timeout=600)
        rates.append(n_map / (time.perf_counter() - t))
        assert sum(len(c) for c in got) == n_map and got[-1][-1] == n_map - 1
        out.forget()
    report("celery.rt", "us", rts)
    report(f"celery.map.chunks{chunk}", "tasks/s", rates)


if mode == "worker":
    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={int(sys.argv[3])}",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )
else:
    bench(*(int(a) for a in sys.argv[3:7]))
