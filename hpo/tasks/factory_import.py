"""Importing the function a `[task] kind = "python"` study file names: a factory string
("package.module:function" or "path/to/file.py:function") to the callable, with a
UserError that says what is wrong with the string, the file or the import.

A module name is imported as `python -m` would (the working folder first); a file path
is imported under a name of its own, so two study files' `task.py` never collide.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from hpo.errors import UserError, one_line


def import_factory(spec: str) -> Any:
    """The function a factory string names; a UserError says what is wrong with it."""
    where = f"task.factory {spec!r}"
    target, _, name = spec.rpartition(":")
    if target.endswith(".py") or "/" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise UserError(
                f"{where}: no such file {path} (a relative path in a study file is resolved "
                "against the study file's folder)"
            )
        mod_name = f"hpo_user_task_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise UserError(f"{where}: {path} is not a Python file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:
            sys.modules.pop(mod_name, None)
            raise UserError(f"{where}: importing {path} failed: {one_line(err)}") from None
    else:
        if str(Path.cwd()) not in sys.path and "" not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # as `python -m` would: the working folder
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            raise UserError(
                f"{where}: module {err.name!r} not found on the Python path or in the working "
                f"folder {Path.cwd()} (a module name is imported as `python -m` would; run "
                "from the folder that holds it, install it, or give a file: "
                "'path/to/file.py:function', resolved against the study file's folder)"
            ) from None
        except Exception as err:
            raise UserError(f"{where}: importing {target} failed: {one_line(err)}") from None
    function = getattr(module, name, None)
    if function is None:
        raise UserError(f"{where}: {target} has no attribute {name!r}")
    if not callable(function):
        raise UserError(f"{where}: {target}.{name} is not callable")
    return function
