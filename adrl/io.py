"""Atomic artifact writes and checked manifest reads (JSON + safetensors / .npy, never pickle)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import yaml

from adrl.errors import ArtifactError, ConfigError


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a sibling temp path; on success fsync it and rename it over ``path`` (a crash leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts get the usual permissions
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_open(path: Path | str, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file for writing that replaces ``path`` atomically when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path | str, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot serialise {type(o).__name__} to JSON")


def write_npy_atomic(path: Path | str, array: np.ndarray) -> None:
    """Write a numpy array as ``.npy`` atomically."""
    with atomic_open(path, "wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)


MAX_JSON_BYTES = 64 << 20  # manifests and metadata are small; arrays live in .npy / .safetensors files
MAX_JSON_DEPTH = 64


def read_json(path: Path | str, *, what: str = "file") -> dict[str, Any]:
    """Read a JSON object, raising ``ArtifactError`` that names the file when it is missing, too large, nested
    deeper than :data:`MAX_JSON_DEPTH` or malformed."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{what} {path} does not exist")
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ArtifactError(f"{what} {path} has {size:,} bytes, more than the {MAX_JSON_BYTES:,} a {what} may have")
    text = path.read_bytes()
    if _depth(text) > MAX_JSON_DEPTH:
        raise ArtifactError(f"{what} {path} is nested deeper than {MAX_JSON_DEPTH} levels; not an adrl {what}")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{what} {path} is not valid JSON ({e}); was the write interrupted?") from e
    if not isinstance(data, dict):
        raise ArtifactError(f"{what} {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _depth(text: bytes) -> int:
    """Upper bound of a JSON text's nesting (brackets inside strings count too: it only bounds the parse)."""
    raw = np.frombuffer(text, dtype=np.uint8)
    step = (raw == ord("[")).astype(np.int32) + (raw == ord("{")) - (raw == ord("]")) - (raw == ord("}"))
    return int(np.cumsum(step).max(initial=0))


def read_manifest(
    directory: Path | str,
    *,
    kind: str | tuple[str, ...] | None = None,
    version: int | None = None,
    name: str = "manifest.json",
) -> dict[str, Any]:
    """Read ``directory/name`` and check its ``kind`` and ``version`` fields."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory {directory} does not exist")
    manifest = read_json(directory / name, what="manifest")
    if kind is not None:
        kinds = (kind,) if isinstance(kind, str) else kind
        if manifest.get("kind") not in kinds:
            raise ArtifactError(f"{directory / name}: kind is {manifest.get('kind')!r}, expected one of {list(kinds)}")
    if version is not None and manifest.get("version") != version:
        raise ArtifactError(
            f"{directory / name}: format version is {manifest.get('version')!r}, this adrl reads version {version}"
        )
    return manifest


def load_npy(path: Path | str, *, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Load an ``.npy`` file without pickle and check its shape."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"array file {path} does not exist")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ArtifactError(f"{path} is not a readable .npy array ({e}); is it truncated?") from e
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ArtifactError(f"{path} has shape {tuple(array.shape)}, the manifest says {tuple(shape)}")
    return np.asarray(array)


def read_yaml_mapping(path: Path | str, *, what: str, max_bytes: int = 1 << 20, max_depth: int = 32) -> dict[str, Any]:
    """The mapping in a small YAML file a user hands us, or one ``ConfigError`` saying what is wrong with it.

    Refused before anything is built: a missing, oversized (``max_bytes``), binary or empty file, aliases
    (``*name``, which can expand exponentially: "billion laughs"), and nesting deeper than ``max_depth``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file {path} does not exist")
    size = path.stat().st_size
    if size > max_bytes:
        raise ConfigError(f"{path}: {size:,} bytes; a {what} file is at most {max_bytes:,} bytes")
    raw = path.read_bytes()
    try:
        text: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise ConfigError(f"{path}: not a UTF-8 text file; expected a YAML {what}")
    if not text.strip():
        raise ConfigError(f"{path}: the file is empty; expected a mapping of {what} fields")
    try:
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            line = event.start_mark.line + 1 if event.start_mark is not None else 0
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(
                    f"{path}, line {line}: YAML aliases (*{event.anchor}) are not accepted in a "
                    f"{what} file; write the value out"
                )
            if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                depth += 1
                if depth > max_depth:
                    raise ConfigError(f"{path}, line {line}: nested deeper than {max_depth} levels")
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                depth -= 1
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e)[:300]})") from None
    if data is None:  # only comments: as empty as an empty file
        raise ConfigError(f"{path}: the file is empty (comments only); expected a mapping of {what} fields")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {what} fields, got {type(data).__name__}")
    return data


def check_output(path: Path | str, *, kind: str, force: bool, flag: str = "--out", also: str | None = None) -> Path:
    """Check that ``path`` can receive a new ``kind`` ("file" or "directory") before any work is done.

    An existing output is replaced only with ``force`` (every command says so in the same words; ``also`` names
    one more way out, e.g. ``"--resume to continue it"``); a path of the other kind, or a place that cannot be
    written, is refused. Returns the path.
    """
    path = Path(path)
    other = "directory" if kind == "file" else "file"
    if path.exists():
        if (kind == "file") != path.is_file():
            raise ConfigError(f"{flag} {path} is a {other}; expected a {kind} path")
        if (kind == "file" or any(path.iterdir())) and not force:
            other_way = f", {also}" if also else ""
            raise ConfigError(
                f"{flag} {path} already exists; pass --force to replace it{other_way}, or choose another {flag}"
            )
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write under {parent}; choose a writable place")
    return path
