"""`hpo trial`, `hpo launch`, `hpo worker`: the commands that run trials."""

from __future__ import annotations

import argparse
import json
import os
import sys

from hpo.cli.args import Subparsers, add_overrides, add_threads, say
from hpo.errors import DivergedError, UserError


def add_trial(sub: Subparsers) -> None:
    p = sub.add_parser("trial", help="run one trial with the study's fixed parameters")
    p.add_argument(
        "study_file", nargs="?", help="a study file (studies/*.toml) or an exported config"
    )
    p.add_argument("--config", help="an exported config.toml (same as giving it as STUDY_FILE)")
    add_overrides(p)
    p.add_argument("--seed", type=int, help="seed for the data split, base model and SAE")
    p.add_argument(
        "--data-dir", help="folder with the MNIST IDX files (else $HPO_DATA_DIR, else the cache)"
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--no-test", action="store_true", help="do not score the test split")
    add_threads(p, "torch CPU threads (default: the cores this process may use)")
    p.set_defaults(func=cmd_trial)


def cmd_trial(args: argparse.Namespace) -> int:
    from hpo.cpus import threads_per_worker, torch_threads
    from hpo.outputs.trial_table import format_result
    from hpo.service.concept_budget import concept_budget_warnings, too_few_components
    from hpo.service.objective import over_limits
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
        say(f"task {study.task.kind}: preparing data and base model", quiet=not progress)
        ctx = prepare_task(study, data_dir=args.data_dir, progress=progress)
        concept_names = getattr(ctx, "concept_names", ())
        if (why := too_few_components(study, concept_names)) is not None:
            raise UserError(f"{path}: {why}")
        for line in concept_budget_warnings(study, concept_names):
            say(f"warning: {path}: {line}", quiet=False)
        say(f"training Faithful-SAE ({study.params.steps} steps)", quiet=not progress)
        try:
            result, _ = run_trial(
                study, ctx, study.params, with_test=not args.no_test, progress=progress
            )
        except DivergedError as err:
            raise UserError(
                f"{path}: the trial diverged: {err}; lower params.lr or the loss weights"
            ) from None
    for line in over_limits(study, result):
        say(f"warning: {path}: {line}", quiet=False)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(format_result(result))
    return 0


def add_launch(sub: Subparsers) -> None:
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
    add_overrides(p)
    add_threads(p, "torch CPU threads per worker (default: the usable cores / workers)")
    p.add_argument(
        "--gpus",
        metavar="LIST",
        help="CUDA indices to place workers on, worker i on the (i mod n)-th, e.g. 0,2; "
        "none = the CPU (default: every visible GPU, when params.device is auto)",
    )
    p.set_defaults(func=cmd_launch)


def cmd_launch(args: argparse.Namespace) -> int:
    from hpo.cpus import check_threads
    from hpo.device import parse_gpus, visible_gpus
    from hpo.service.runner import launch

    if args.workers < 0:
        raise UserError(f"--workers: must be 0 or more, got {args.workers}")
    if args.n_trials is not None and args.n_trials < 1:
        raise UserError(f"--n-trials: must be at least 1, got {args.n_trials}")
    from hpo.outputs.summary import study_summary

    check_threads(args.threads)
    gpus = None if args.gpus is None else parse_gpus(args.gpus, visible_gpus())
    return launch(
        args.study_file,
        gpus=gpus,
        summarize=study_summary,
        workers=args.workers,
        n_trials=args.n_trials,
        storage_url=args.storage,
        data_dir=args.data_dir,
        overrides=args.overrides,
        threads=args.threads,
    )


def add_worker(sub: Subparsers) -> None:
    p = sub.add_parser("worker", help="join an existing study (from any machine)")
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", help="SQLAlchemy URL (default: $HPO_STORAGE_URL)")
    p.add_argument("--worker-id", help="a name for this worker (default: host-pid)")
    add_threads(p, "torch CPU threads for this worker (default: the cores it may use)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument(
        "--gpu",
        metavar="K",
        help="run on CUDA device K (none = the CPU), where the study's params.device is auto",
    )
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:

    from hpo.cpus import check_threads
    from hpo.device import parse_gpu, visible_gpus
    from hpo.service.runner import work
    from hpo.storage.urls import given_url

    check_threads(args.threads)
    device = None if args.gpu is None else parse_gpu(args.gpu, visible_gpus())
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
        device=device,
    )
