"""`hpo status`, `dashboard`, `report`, `export`, `confirm`, `storage-proxy`: the
commands that read, show or re-run what a study stored."""

from __future__ import annotations

import argparse
import json

from hpo.cli.args import Subparsers, add_threads, say
from hpo.errors import UserError


def add_status(sub: Subparsers) -> None:
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
    print(json.dumps([r.to_json() for r in rows]) if args.json else format_status(rows))
    return 0


def add_dashboard(sub: Subparsers) -> None:
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


def add_report(sub: Subparsers) -> None:
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


def add_export(sub: Subparsers) -> None:
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
    say(f"exported {why}")
    print(path)
    return 0


def add_storage_proxy(sub: Subparsers) -> None:
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


def add_confirm(sub: Subparsers) -> None:
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
    add_threads(p, "torch CPU threads (default: the cores this process may use)")
    p.set_defaults(func=cmd_confirm)


def cmd_confirm(args: argparse.Namespace) -> int:
    from hpo.cpus import threads_per_worker, torch_threads
    from hpo.outputs.notes import sync_best_notes
    from hpo.service.confirm import confirm, format_rows

    with torch_threads(threads_per_worker(1, args.threads)):
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
