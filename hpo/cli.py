"""The `hpo` command. Argument parsing and printing only; the work lives elsewhere.

A `UserError` becomes one line on stderr and exit code 2; a bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from hpo.errors import DivergedError, UserError


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a field of the study file, e.g. --set params.steps=500 --set task.bias=0.9",
    )


def _add_trial(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trial", help="run one trial with the study's fixed parameters")
    p.add_argument(
        "study_file", nargs="?", help="a study file (studies/*.toml) or an exported config"
    )
    p.add_argument("--config", help="an exported config.toml (same as giving it as STUDY_FILE)")
    _add_overrides(p)
    p.add_argument("--seed", type=int, help="seed for the data split, base model and SAE")
    p.add_argument(
        "--data-dir", help="folder with the MNIST IDX files (else $HPO_DATA_DIR, else the cache)"
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--no-test", action="store_true", help="do not score the test split")
    _add_threads(p, "torch CPU threads (default: the cores this process may use)")
    p.set_defaults(func=cmd_trial)


def _add_threads(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument(
        "--threads",
        type=int,
        help=f"{text}; the cores it may use are the least of its CPU affinity, its cgroup "
        "CPU quota and SLURM_CPUS_PER_TASK",
    )


def cmd_trial(args: argparse.Namespace) -> int:
    from hpo.cpus import threads_per_worker, torch_threads
    from hpo.outputs.trial_table import format_result
    from hpo.service.study_file import load_study_file
    from hpo.service.trial import prepare_task, run_trial

    path = args.config or args.study_file
    if not path:
        raise UserError("hpo trial: give a study file, e.g. hpo trial studies/colored_mnist.toml")
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides += [f"params.seed={args.seed}", f"task.seed={args.seed}"]
    threads = threads_per_worker(1, args.threads)
    study = load_study_file(path, overrides)
    # Progress goes to a terminal only: on a pipe, stderr is the error line or nothing.
    progress = sys.stderr.isatty()
    with torch_threads(threads):
        _say(f"task {study.task.kind}: preparing data and base model", quiet=not progress)
        ctx = prepare_task(study, data_dir=args.data_dir, progress=progress)
        _say(f"training Faithful-SAE ({study.params.steps} steps)", quiet=not progress)
        try:
            result, _ = run_trial(
                study, ctx, study.params, with_test=not args.no_test, progress=progress
            )
        except DivergedError as err:
            raise UserError(
                f"{path}: the trial diverged: {err}; lower params.lr or the loss weights"
            ) from None
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(format_result(result))
    return 0


def _add_launch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("launch", help="create or resume a study and run local workers")
    p.add_argument("study_file", help="a study file, e.g. studies/colored_mnist.toml")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="local worker processes (default 1; 0 = create the study and its base "
        "model only, for workers started elsewhere with hpo worker)",
    )
    p.add_argument("--n-trials", type=int, help="study-wide trial budget (default: the file's)")
    p.add_argument(
        "--storage", help="SQLAlchemy URL (default: the file's, else storage/<study>.db)"
    )
    p.add_argument("--data-dir", help="folder with the MNIST IDX files")
    _add_overrides(p)
    _add_threads(p, "torch CPU threads per worker (default: the usable cores / workers)")
    p.set_defaults(func=cmd_launch)


def cmd_launch(args: argparse.Namespace) -> int:
    from hpo.cpus import check_threads
    from hpo.service.runner import launch

    if args.workers < 0:
        raise UserError(f"--workers: must be 0 or more, got {args.workers}")
    if args.n_trials is not None and args.n_trials < 1:
        raise UserError(f"--n-trials: must be at least 1, got {args.n_trials}")
    from hpo.outputs.summary import study_summary

    check_threads(args.threads)
    return launch(
        args.study_file,
        summarize=study_summary,
        workers=args.workers,
        n_trials=args.n_trials,
        storage_url=args.storage,
        data_dir=args.data_dir,
        overrides=args.overrides,
        threads=args.threads,
    )


def _add_worker(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="join an existing study (from any machine)")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="SQLAlchemy URL (default: $HPO_STORAGE_URL)")
    p.add_argument("--worker-id", help="a name for this worker (default: host-pid)")
    _add_threads(p, "torch CPU threads for this worker (default: the cores it may use)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    import os

    from hpo.cpus import check_threads
    from hpo.service.runner import work
    from hpo.storage.urls import given_url

    check_threads(args.threads)
    url = given_url(args.storage, "hpo worker")
    worker = args.worker_id or f"{os.uname().nodename}-{os.getpid()}"
    from hpo.outputs.notes import publish_for_dashboard

    return work(
        args.study,
        url,
        worker=worker,
        threads=args.threads,
        timeout=args.timeout,
        on_complete=publish_for_dashboard,
    )


def _add_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="studies, trial counts, best values, workers alive")
    p.add_argument(
        "study",
        nargs="?",
        help="also this study's summary: best against the original and the references, "
        "its confirmation, next commands (given by itself when the storage holds one study)",
    )
    p.add_argument(
        "--storage", help="SQLAlchemy URL (default: $HPO_STORAGE_URL, else storage/*.db)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from hpo.outputs.summary import study_summary
    from hpo.service.status import collect_status, format_status

    rows = collect_status(args.storage, args.study, summarize=study_summary)
    print(json.dumps(rows) if args.json else format_status(rows))
    return 0


def _add_dashboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="optuna-dashboard over a storage, with trial charts")
    p.add_argument(
        "--storage", help="SQLAlchemy URL (default: $HPO_STORAGE_URL, else the one storage/*.db)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; the dashboard has no login)",
    )
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free)")
    p.add_argument(
        "--read-only",
        action="store_true",
        help="refuse every request that would change studies or artifacts",
    )
    p.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from hpo.outputs.dashboard import serve

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port: must be 0-65535, got {args.port}")
    return serve(args.storage, host=args.host, port=args.port, read_only=args.read_only)


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report of a study")
    p.add_argument("study", help="study name")
    p.add_argument(
        "--storage", help="SQLAlchemy URL (default: $HPO_STORAGE_URL, else storage/<study>.db)"
    )
    p.add_argument("--out", help="HTML file to write (default: <study>-report.html)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from hpo.outputs.report import write_report

    path = write_report(args.study, args.storage, args.out)
    print(path)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="best config, SAE and debiased model weights, model card")
    p.add_argument("study", help="study name")
    p.add_argument(
        "--storage", help="SQLAlchemy URL (default: $HPO_STORAGE_URL, else storage/<study>.db)"
    )
    p.add_argument(
        "--trial",
        type=int,
        help="trial number (default: the best; required for "
        "a multi-objective study, from its Pareto front)",
    )
    p.add_argument("--out", help="folder to write (default: models/<study>/)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from hpo.outputs.export import export

    path, why = export(args.study, args.storage, trial=args.trial, out=args.out)
    _say(f"exported {why}")
    print(path)
    return 0


def _add_storage_proxy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "storage-proxy",
        help="serve a study database to many workers over gRPC "
        "(workers then use --storage grpc://HOST:PORT)",
    )
    p.add_argument(
        "--storage", help="SQLAlchemy URL of the database to serve (default: $HPO_STORAGE_URL)"
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; "
        "the proxy has no login: bind a private network only)",
    )
    p.add_argument("--port", type=int, default=13000, help="port (default 13000)")
    p.set_defaults(func=cmd_storage_proxy)


def cmd_storage_proxy(args: argparse.Namespace) -> int:
    from hpo.storage.proxy import serve
    from hpo.storage.urls import given_url

    url = given_url(args.storage, "hpo storage-proxy")
    return serve(url, host=args.host, port=args.port)


def _add_confirm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "confirm", help="re-run the best configurations with fresh seeds (mean ± std on val)"
    )
    p.add_argument("study", help="study name")
    p.add_argument(
        "--storage", help="SQLAlchemy URL (default: $HPO_STORAGE_URL, else storage/<study>.db)"
    )
    p.add_argument("--top", type=int, default=3, help="how many of the best trials (default 3)")
    p.add_argument("--seeds", type=int, default=3, help="fresh seeds per trial (default 3)")
    p.add_argument(
        "--new-base-model",
        action="store_true",
        help="also a new base model (and data split) per seed, not only a new SAE",
    )
    p.add_argument("--data-dir", help="folder with the MNIST IDX files (--new-base-model)")
    p.set_defaults(func=cmd_confirm)


def cmd_confirm(args: argparse.Namespace) -> int:
    from hpo.outputs.notes import sync_best_notes
    from hpo.service.confirm import confirm, format_rows

    rows = confirm(
        args.study,
        args.storage,
        on_confirmed=sync_best_notes,
        top=args.top,
        seeds=args.seeds,
        new_base_model=args.new_base_model,
        data_dir=args.data_dir,
    )
    objective = next(iter(rows[0].record.val))
    print(format_rows(rows, objective))
    return 0


def _say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_trial,
    _add_launch,
    _add_worker,
    _add_status,
    _add_dashboard,
    _add_report,
    _add_export,
    _add_confirm,
    _add_storage_proxy,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpo", description="Hyperparameter optimisation for Faithful-SAE debiasing"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from hpo.service.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging()  # here, not on import: importing hpo leaves logging alone
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        # One line, whatever the message: scripts and people read the first line.
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The `hpo` command. OpenMP's settings go into the environment first: the OpenMP
    runtime reads them once, when torch loads it (see hpo.cpus)."""
    from hpo.cpus import set_openmp_env

    set_openmp_env()
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `hpo status | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
