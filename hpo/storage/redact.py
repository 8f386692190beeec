"""Secrets out of everything hpo prints, logs, stores or serves.

A storage password can arrive three ways: in the URL's user info
(`postgresql://hpo:PASSWORD@host/db`, where a careless `@` in the password is common),
as a URL query parameter (`?password=...`), or in `storage.engine_kwargs` (e.g.
`connect_args = { password = "..." }`). One family of functions handles all three:

- `mask_url` is the only form of a URL that is ever printed or stored;
- `redact` masks the values of secret-looking keys in a nested mapping (the stored study
  file, an exported config);
- `secrets_of` lists the clear secrets, and `scrub` removes them from any text we did not
  write ourselves (a driver's error message can echo what it was given).

The parsing is deliberately simpler than SQLAlchemy's: it never fails, and when in doubt
it masks more, never less.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote, unquote_plus

MASK = "***"

# Keys whose values are secrets: password, passwd, pwd, secret, token, api_key, ...
_SECRET_KEY = re.compile(
    r"pass(?!file)|pwd|secret|token|api[_-]?key|credential|private[_-]?key", re.I
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*://)(.*)$", re.S)


def is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def _split(url: str) -> tuple[str, str | None, str]:
    """(scheme://, user info or None, the rest). The user info runs to the *last* `@` of
    the authority, so that an unencoded `@` in a password stays inside it."""
    m = _SCHEME.match(url)
    scheme, rest = (m.group(1), m.group(2)) if m else ("", url)
    head = rest.split("?", 1)[0]
    if "@" in head:
        info = head.rpartition("@")[0]
        tail = rest[len(info) + 1 :]
    elif "@" in rest and "/" not in head and ":" in head:
        # A `?` inside the password: `user:pa?ss@host/db`. Everything to the last `@`.
        info, _, tail = rest.rpartition("@")
    else:
        return scheme, None, rest
    user = info.split(":", 1)[0]
    if "/" in user:  # a path with an `@` in it (sqlite:///data/a@b.db), not user info
        return scheme, None, rest
    return scheme, info, tail


def _mask_query(query: str) -> str:
    parts = []
    for item in query.split("&"):
        key, sep, _ = item.partition("=")
        parts.append(f"{key}={MASK}" if sep and is_secret_key(unquote_plus(key)) else item)
    return "&".join(parts)


def mask_url(url: str) -> str:
    """The URL with its password and any secret query parameter replaced by ***."""
    if not isinstance(url, str):
        return url
    scheme, info, rest = _split(url)
    if info is not None and ":" in info:
        info = f"{info.split(':', 1)[0]}:{MASK}"
    path, sep, query = rest.partition("?")
    rest = path + sep + _mask_query(query) if sep else path
    return scheme + (f"{info}@" if info is not None else "") + rest


def redact(value: Any) -> Any:
    """A copy of a nested structure with secret keys' values masked and URLs masked."""
    if isinstance(value, Mapping):
        return {
            k: (MASK if is_secret_key(k) and v not in (None, "") else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return value


def unredacted(value: Any) -> Any:
    """A copy without the entries `redact` masked: a stored, redacted engine_kwargs must
    not hand "***" to a database driver as a password."""
    if isinstance(value, Mapping):
        return {k: unredacted(v) for k, v in value.items() if v != MASK}
    return value


def secrets_of(url: str | None = None, *mappings: Mapping[str, Any] | None) -> list[str]:
    """The clear secrets in a URL and in mappings such as engine_kwargs, longest first
    (as typed and percent-decoded), for `scrub`."""
    found: set[str] = set()
    if url:
        _, info, rest = _split(url)
        if info is not None and ":" in info:
            password = info.split(":", 1)[1]
            found.add(password)
            # A driver that split the password at an `@` (SQLAlchemy does) echoes the
            # pieces: the tail as part of the host name in "cannot resolve host" errors.
            found.update(p for p in password.split("@") if p)
        _, sep, query = rest.partition("?")
        for item in query.split("&") if sep else ():
            key, eq, val = item.partition("=")
            if eq and is_secret_key(unquote_plus(key)):
                found.add(val)
    for mapping in mappings:
        _collect(mapping, found)
    found |= {unquote(s) for s in found} | {unquote_plus(s) for s in found}
    return sorted((s for s in found if s and s != MASK), key=len, reverse=True)


def _collect(value: Any, found: set[str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            if is_secret_key(k) and isinstance(v, str | int | float) and not isinstance(v, bool):
                found.add(str(v))
            else:
                _collect(v, found)
    elif isinstance(value, list | tuple):
        for v in value:
            _collect(v, found)
    elif isinstance(value, str) and "://" in value:
        found.update(secrets_of(value))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text
