"""`inferfleet` command line: run a fleet, a worker, Flower, or look at jobs and models."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from inferfleet import keys, logs
from inferfleet.errors import BadArgumentError, ConfigurationError, InferfleetError
from inferfleet.models.config import TensorSpec
from inferfleet.settings import Settings, load_settings, mask_url
from inferfleet.tracing import export_spans

Command = Callable[[argparse.Namespace, Settings], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run one command; the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        logs.configure(args.log_level, json_lines=settings.log_format == "json")
        command: Command = args.run
        flush_spans = export_spans(f"inferfleet-{args.command}") if settings.otel else None
        try:
            return command(args, settings)
        finally:
            if flush_spans is not None:
                flush_spans()
    except InferfleetError as exc:
        print(f"inferfleet: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inferfleet", description=__doc__)
    parser.add_argument("--log-level", default="WARNING")
    sub = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")
    _fleet_commands(sub)
    _job_commands(sub)
    _operations_commands(sub)
    return parser


Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _fleet_commands(sub: Subparsers) -> None:
    """up, demo, worker, flower: processes of the fleet."""
    up = sub.add_parser("up", help="embedded Redis + workers + Flower on this machine")
    up.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="worker processes (default: one per core; each is GIL-bound)")
    up.add_argument("--no-flower", action="store_true")
    up.add_argument("--no-redis", action="store_true",
                    help="no embedded Redis: workers and Flower use INFERFLEET_REDIS_URL "
                         "(one server, or sentinel:// URLs)")
    up.set_defaults(run=_up)

    demo = sub.add_parser("demo", help="up, push the digits held-out set through, summarise")
    demo.add_argument("--model", default="digits")
    demo.add_argument("--passes", type=int, default=40,
                      help="times the held-out rows are pushed through")
    demo.add_argument("--job-size", type=int, default=256)
    demo.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                      help="worker processes (default: one per core)")
    demo.add_argument("--external", action="store_true",
                      help="push through the fleet at INFERFLEET_REDIS_URL instead of "
                           "starting one")
    demo.set_defaults(run=_demo)

    worker = sub.add_parser("worker", help="run one worker process (a Celery worker)")
    worker.add_argument("--models", help="comma-separated model names (default: all)")
    worker.add_argument("--hostname", help="Celery node name (default: inferfleet-PID@host)")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics here (default: INFERFLEET_METRICS_PORT;"
                             " 0: none)")
    worker.set_defaults(run=_worker)

    flower = sub.add_parser("flower", help="run Flower for the fleet")
    flower.add_argument("--port", type=int, default=None)
    flower.add_argument("--address", default="127.0.0.1")
    flower.set_defaults(run=_flower)


def _job_commands(sub: Subparsers) -> None:
    """submit, watch, status: pushing work and following it."""
    submit = sub.add_parser("submit", help="push a .npy/.csv/.parquet file through the fleet")
    submit.add_argument("file", type=Path)
    submit.add_argument("--model", required=True)
    submit.add_argument("--session", help="session id (default: the file's name and time)")
    submit.add_argument("--out", type=Path, help="results file (default: FILE.results.EXT)")
    submit.add_argument("--id-column", help="CSV/Parquet column whose values are the ids")
    submit.add_argument("--job-size", type=int, default=256)
    submit.add_argument("--priority", choices=keys.PRIORITIES, default="normal",
                        help="the jobs' priority: low for a backfill that must not delay "
                             "interactive jobs (default: normal)")
    submit.add_argument("--include-features", action="store_true",
                        help="repeat the input's feature columns in the results file")
    submit.add_argument("--resume", action="store_true",
                        help="go on with an interrupted run of FILE from its last whole "
                             "batch, into the same session (its --session and --id-column)")
    submit.set_defaults(run=_submit)

    watch = sub.add_parser("watch", help="follow a session until it ends")
    watch.add_argument("session")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between updates")
    watch.add_argument("--timeout", type=float, default=3600.0)
    watch.add_argument("--wait-for-start", type=float, default=0.0, metavar="S",
                       help="wait this long for a session nothing was submitted to yet")
    watch.set_defaults(run=_watch)

    status = sub.add_parser("status", help="print one job's state (and result when done)")
    status.add_argument("job_id")
    status.set_defaults(run=_status)


def _operations_commands(sub: Subparsers) -> None:
    """dead, models, bench: looking after the fleet."""
    dead = sub.add_parser("dead", help="list or replay dead-lettered messages")
    dead.add_argument("action", choices=["list", "replay"])
    dead.add_argument("indexes", nargs="*", type=int,
                      help="entries to replay, as numbered by 'list' (default: all)")
    dead.set_defaults(run=_dead)

    health = sub.add_parser("health", help="exit 0 when the fleet can serve, else 1 with why")
    health.add_argument("--model", action="append", default=[],
                        help="check this model only (repeatable; default: every model)")
    health.add_argument("--json", action="store_true", help="print the report as JSON")
    health.add_argument("--max-queue-age", type=float, default=300.0, metavar="S",
                        help="unhealthy when a model's oldest queued job is older")
    health.add_argument("--dead-letter-window", type=float, default=300.0, metavar="S",
                        help="unhealthy when a message was dead-lettered this recently")
    health.set_defaults(run=_health)

    models = sub.add_parser("models", help="list the models in the models folder, or add one")
    models.add_argument("action", nargs="?", choices=["list", "add"], default="list")
    models.add_argument("file", nargs="?", type=Path, help="add: the .onnx file to install")
    models.add_argument("--name", help="add: the model's name (an existing one: a new version)")
    models.add_argument("--version", help="add: its version (default: the current one + 1)")
    models.add_argument("--description", help="add: a line about it")
    models.add_argument("--features", help="add: the column names of a one-input model's "
                                           "features, comma-separated, in its order")
    models.add_argument("--wait", type=float, default=30.0, metavar="S",
                        help="add: wait up to S seconds for the running fleet to serve it")
    models.add_argument("--fresh-config", action="store_true",
                        help="add: do not keep the current version's config (labels, "
                             "postprocess, ...)")
    models.set_defaults(run=_models)

    bench = sub.add_parser("bench", help="throughput and latency: raw ONNX Runtime, a "
                                         "plain Celery task per sample, and the fleet")
    bench.add_argument("--models", default="digits,digits_mlp,cnn",
                       help="cnn: an image-sized network the bench builds for the run")
    bench.add_argument("--repeat", type=int, default=3)
    bench.add_argument("--scale", type=float, default=1.0,
                       help="multiplies every sample count (0.01 for a smoke run)")
    bench.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="fleet worker processes (default: one per core)")
    bench.add_argument("--load", choices=["steady", "ramp", "overload"],
                       help="a load drill instead: single-sample jobs offered in an open loop "
                            "at 50%%, 0-150%% or 300%% of the measured capacity")
    bench.add_argument("--seconds", type=float, default=10.0, help="--load: its length")
    bench.add_argument("--markdown", type=Path, help="write the results table here")
    bench.add_argument("--plot", type=Path, help="write a PNG plot here")
    bench.set_defaults(run=_bench)


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from inferfleet.fleet import Fleet

    with Fleet(settings, workers=args.workers, flower=not args.no_flower,
               embedded_redis=not args.no_redis) as fleet:
        found = "" if args.no_redis else (
            f" Clients and commands run from this folder find it (URL and password: "
            f"{settings.data_dir / 'fleet.json'}).")
        print(f"inferfleet up: redis {mask_url(fleet.redis_url)}, {args.workers} worker(s)"
              + ("" if args.no_flower else f", Flower http://127.0.0.1:{settings.flower_port}")
              + f"; logs in {fleet.log_dir}.{found} Ctrl-C stops everything.", flush=True)
        _wait_for_interrupt()
    print("inferfleet: stopped", flush=True)
    return 0


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    # Installed explicitly: a shell starts background jobs with SIGINT ignored, and then
    # Python would never raise KeyboardInterrupt.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from inferfleet.demo import run_demo

    return run_demo(settings, model=args.model, passes=args.passes, job_size=args.job_size,
                    workers=args.workers, own_fleet=not args.external)


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from inferfleet.worker import run_worker

    models = [m for m in (args.models or "").split(",") if m] or None
    if args.metrics_port is not None:
        settings = settings.model_copy(update={"metrics_port": args.metrics_port})
    run_worker(settings, models=models, hostname=args.hostname, loglevel=args.loglevel)
    return 0


def _flower(args: argparse.Namespace, settings: Settings) -> int:
    from inferfleet.celery_app import make_app

    port = settings.flower_port if args.port is None else args.port
    argv = ["flower", f"--port={port}", f"--address={args.address}"]
    if settings.flower_basic_auth is not None:
        argv.append(f"--basic-auth={settings.flower_basic_auth.get_secret_value()}")
    elif ipaddress.ip_address(args.address).is_loopback:
        # Only this machine can reach it: let its API answer without credentials.
        os.environ["FLOWER_UNAUTHENTICATED_API"] = "true"
    else:
        raise ConfigurationError(f"Flower on {args.address} would be open to the network: "
                                 "set INFERFLEET_FLOWER_BASIC_AUTH=user:password")
    make_app(settings).start(argv)
    return 0


def _submit(args: argparse.Namespace, settings: Settings) -> int:
    from inferfleet.filerun import default_out, run_file
    from inferfleet.producer import Client
    from inferfleet.resultfiles import RunState

    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", args.file.stem)
    session = None if args.resume else args.session or f"{stem}-{int(time.time())}"
    if session is not None:
        print(f"session {session}", file=sys.stderr)

    def progress(done: int, total: int, failed: int) -> None:
        rate = done / max(time.perf_counter() - started, 1e-9)
        bar = "#" * int(30 * done / total) if total else ""
        print(f"\r[{bar:<30}] {done:,}/{total:,} rows  {rate:,.0f}/s  {failed:,} failed",
              end="", file=sys.stderr, flush=True)

    started = time.perf_counter()
    out = args.out or default_out(args.file)
    try:
        with Client(settings=settings) as client:
            report = run_file(client, args.file, model=args.model, out=out,
                              session_id=session, id_column=args.id_column,
                              job_size=args.job_size, progress=progress, resume=args.resume,
                              include_features=args.include_features,
                              priority=args.priority)
    except (KeyboardInterrupt, InferfleetError) as exc:
        if RunState.path_for(out).exists():
            print(f"\ninferfleet: interrupted ({exc or type(exc).__name__}); the rows written "
                  f"so far stay in {out}: `inferfleet submit {args.file} --model "
                  f"{args.model} --resume` goes on from there", file=sys.stderr)
            return 130 if isinstance(exc, KeyboardInterrupt) else 2
        raise
    print(file=sys.stderr)
    print(report.render())
    return 0


def _watch(args: argparse.Namespace, settings: Settings) -> int:
    from inferfleet.producer import Client
    from inferfleet.watch import watch

    with Client(settings=settings) as client:
        return watch(client, args.session, interval_s=args.interval, timeout_s=args.timeout,
                     wait_for_start_s=args.wait_for_start)


def _dead(args: argparse.Namespace, settings: Settings) -> int:
    from inferfleet.deadletters import DeadLetters

    with DeadLetters.from_settings(settings) as letters:
        if args.action == "list":
            for index, entry in enumerate(letters.entries()):
                print(f"{index}\t{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(entry.at))}"
                      f"\t{entry.queue}\t{entry.job_id or '-'}\t{entry.bytes} bytes"
                      f"\t{entry.reason}")
        else:
            replayed = letters.replay(args.indexes or None)
            print(f"replayed {replayed} message(s) to their queues")
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from inferfleet.producer import Client

    with Client(settings=settings) as client:
        state = client.status(args.job_id)
        print(state)
        if state == "unknown":
            print(f"no job {args.job_id!r} on {mask_url(settings.redis_url)}: never "
                  "submitted, or its record expired (result_ttl_s="
                  f"{settings.result_ttl_s:.0f} s)", file=sys.stderr)
            return 1
        if state not in ("queued", "running"):
            result = client.result(args.job_id, timeout=5)
            counts: dict[str, int] = {}
            for sample in result.samples:
                counts[sample.status.value] = counts.get(sample.status.value, 0) + 1
            print(json.dumps({"model": result.model, "samples": counts,
                              "latency_ms": result.latency_ms}, indent=2))
    return 0


def _health(args: argparse.Namespace, settings: Settings) -> int:
    import redis

    from inferfleet.connections import redis_client
    from inferfleet.health import check, render, unreachable

    client = redis_client(settings)
    try:
        report = check(client, settings, models=args.model,
                       max_queue_age_s=args.max_queue_age,
                       dead_letter_window_s=args.dead_letter_window)
    except redis.RedisError as exc:
        report = unreachable(settings, exc)
    finally:
        client.close()
    print(report.to_json().decode() if args.json else render(report))
    return 0 if report.healthy else 1


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    try:
        from inferfleet.bench.report import costs, markdown, plot, targets
        from inferfleet.bench.runner import BenchOptions, run_bench
    except ImportError as exc:
        raise ConfigurationError(f"the benchmark needs {exc.name}: pip install "
                                 "'inferfleet[bench]'") from exc

    if args.load:
        return _drill(args, settings)
    options = BenchOptions(models=tuple(args.models.split(",")), repeat=args.repeat,
                           scale=args.scale, workers=args.workers)
    result = run_bench(settings, options)
    table = markdown(result)
    checks = "\n".join(target.line() for target in targets(result))
    measured = "\n".join(costs(result))
    report = f"{table}\n\nTargets (medians of {args.repeat}):\n{checks}\n\nCosts:\n{measured}"
    print(f"\n{report}")
    if args.markdown:
        args.markdown.write_text(f"{report}\n")
    if args.plot:
        plot(result, args.plot)
    return 0


def _drill(args: argparse.Namespace, settings: Settings) -> int:
    from inferfleet.bench.drills import plot_drill, run_drill

    report = run_drill(args.load, models_dir=settings.models_dir, seconds=args.seconds,
                       workers=args.workers)
    table = report.table()
    print(table)
    if args.markdown:
        args.markdown.write_text(f"{table}\n")
    if args.plot:
        plot_drill(report, args.plot)
    return 1 if report.lost else 0


def _models(args: argparse.Namespace, settings: Settings) -> int:
    from inferfleet.models.registry import Registry
    from inferfleet.models.runtime import OnnxModel

    if args.action == "add":
        return _models_add(args, settings)
    registry = Registry(settings.models_dir)
    for name in registry.names():
        entry = registry.entry(name)
        try:
            model = OnnxModel(entry, intra_op_threads=1, providers=settings.provider_list())
        except InferfleetError as exc:
            print(f"{name}\tcannot load: {exc}")
            continue
        sig = model.signature
        accuracy = entry.config.metrics.get("holdout_accuracy", "-")
        batch = f"fixed {sig.fixed_batch_size}" if sig.fixed_batch_size else "dynamic"
        print(f"{name}\tversion {sig.version}\t"
              f"inputs {_tensors(sig.inputs)}\toutputs {_tensors(sig.outputs)}\t"
              f"batch axis {batch}\t{entry.path.stat().st_size / 1e6:.2f} MB\taccuracy {accuracy}\t"
              f"providers {','.join(model.providers)}\t{entry.config.description}")
    return 0


def _models_add(args: argparse.Namespace, settings: Settings) -> int:
    from inferfleet.models.adding import add_model, kept_config_file

    if args.file is None or not args.name:
        raise BadArgumentError("models add needs a FILE and --name")
    folder = settings.models_dir / args.name
    kept = None if args.fresh_config or not folder.is_dir() else kept_config_file(folder)
    model = add_model(settings.models_dir, args.file, args.name, version=args.version,
                      description=args.description, fresh_config=args.fresh_config,
                      features=args.features.split(",") if args.features else None)
    sig = model.signature
    print(f"added {args.name} version {sig.version}: inputs {_tensors(sig.inputs)}, "
          f"outputs {_tensors(sig.outputs)}"
          + (f", classes {sig.labels}" if sig.labels else "")
          + (f", features {sig.features}" if sig.features else "")
          + (f"; kept the config of the version before ({kept.name})" if kept else ""))
    print(_await_fleet(settings, args.name, sig.version, timeout_s=args.wait), flush=True)
    return 0


def _await_fleet(settings: Settings, name: str, version: str, *, timeout_s: float) -> str:
    """Wait until a worker of the fleet serves `name` at `version`; what happened."""
    from inferfleet.producer import Client

    url = mask_url(settings.redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        with Client(settings=settings) as client:
            while True:
                models = client.models()
                if not models:  # no worker has ever published a model here: no fleet
                    return (f"no worker has published a model at {url}; workers load it "
                            "when they start")
                served = models.get(name)
                if served is not None and served.version == version:
                    return f"the fleet at {url} serves it: submit now"
                if time.monotonic() >= deadline:
                    return (f"no worker at {url} serves it yet (after {timeout_s:.0f} s): "
                            "workers started with --models take only those, and a worker "
                            "that is not running loads it when it starts")
                time.sleep(0.2)
    except InferfleetError:  # BrokerError: no fleet to tell
        return (f"no fleet answers at {url}; workers load it when they start "
                "(workers serving every model also while they run)")


def _tensors(specs: Sequence[TensorSpec]) -> str:
    return ",".join(f"{s.name}:{s.dtype}{[d or '?' for d in s.shape]}" for s in specs)
