"""Which storage a command uses: one resolver, the same order for every command.

--storage first; else the environment ($HPO_STORAGE_URL, or the variable a study file
names in storage.url_env); else the embedded SQLite file(s) under storage/. Each function
below is that order for one kind of command: launching a study, joining one as a
worker, reading one study (report, export, confirm), or looking at every study in a
storage (status, dashboard). The URL is never printed unmasked (see storage.mask).
"""

from __future__ import annotations

import os
from pathlib import Path

from hpo.config import StorageSection
from hpo.errors import UserError

STORAGE_ENV = "HPO_STORAGE_URL"
DEFAULT_DIR = Path("storage")


def resolve_url(section: StorageSection, study_name: str, cli_url: str | None = None) -> str:
    """For `hpo launch`: --storage, else the env var the study names, else
    $HPO_STORAGE_URL, else its url, else the embedded SQLite file storage/<study>.db."""
    if cli_url:
        return cli_url
    if section.url_env:
        url = os.environ.get(section.url_env)
        if not url:
            raise UserError(
                f"storage.url_env: environment variable {section.url_env} is not set; "
                "export it with the storage URL, or pass --storage"
            )
        return url
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    return section.url or f"sqlite:///{DEFAULT_DIR / (study_name + '.db')}"


def given_url(cli_url: str | None, command: str) -> str:
    """For commands that must be told (`hpo worker`, `hpo storage-proxy`): --storage,
    else $HPO_STORAGE_URL; they never guess a local file."""
    url = cli_url or os.environ.get(STORAGE_ENV)
    if not url:
        raise UserError(f"{command}: give --storage URL or set {STORAGE_ENV}")
    return url


def storage_urls(cli_url: str | None) -> list[str]:
    """For `hpo status`: --storage, else $HPO_STORAGE_URL, else every SQLite file under
    storage/."""
    if cli_url:
        return [cli_url]
    if os.environ.get(STORAGE_ENV):
        return [os.environ[STORAGE_ENV]]
    files = sorted(Path(DEFAULT_DIR).glob("*.db"))
    if not files:
        raise UserError(
            f"no storage given and no studies under {DEFAULT_DIR}/; pass --storage URL "
            f"or set {STORAGE_ENV}"
        )
    return [f"sqlite:///{f}" for f in files]


def single_storage_url(cli_url: str | None) -> str:
    """For `hpo dashboard`: --storage, else $HPO_STORAGE_URL, else the one SQLite file
    under storage/ (several is an error that lists them)."""
    urls = storage_urls(cli_url)
    if len(urls) > 1:
        raise UserError(
            "several storages under storage/ ("
            + ", ".join(u.removeprefix("sqlite:///") for u in urls)
            + "); pick one with --storage, e.g. --storage "
            + urls[0]
        )
    return urls[0]


def study_url(name: str, cli_url: str | None) -> str:
    """For commands that read one study (report, export, confirm): --storage, else
    $HPO_STORAGE_URL, else storage/<study>.db, where launch put it. A missing file is an
    error that lists the studies under storage/."""
    url = resolve_url(StorageSection(), name, cli_url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        import optuna

        from hpo.storage.engine import check_existing_sqlite

        found = []
        for db in sorted(Path(DEFAULT_DIR).glob("*.db")):
            try:
                check_existing_sqlite(f"sqlite:///{db}")
            except UserError:
                continue  # empty or not a study database: nothing to list, nothing to write
            storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
            found += [f"{n} ({db})" for n in optuna.study.get_all_study_names(storage)]
            storage.engine.dispose()
        raise UserError(
            f"no study named {name!r}: {url.removeprefix('sqlite:///')} does not exist; "
            f"studies under {DEFAULT_DIR}/: {', '.join(found) or 'none'} (or pass --storage)"
        )
    return url
