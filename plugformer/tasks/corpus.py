"""A text corpus as two memory-mapped token streams, split by position, built once and reused.

The files of a corpus (a file, a directory, a glob, or the standard library of the running
Python) are split by byte position: the last ``val_fraction`` of every file goes to validation
(``split="position"``), or whole files do (``split="files"``). Each file's training part, then
end-of-text, is appended to ``train.bin``; its validation part, then end-of-text, to ``val.bin``.
Training windows are read from ``train.bin`` only, so no validation byte is ever trained on.

The streams live in a cache folder named by a hash of the files' names and contents, the split
and the tokenizer settings, with ``meta.json`` (the byte and token ranges of every file) written
last, so a folder with ``meta.json`` is complete. A ``bpe`` tokenizer is trained on the training
parts only and stored there too (``tokenizer.json``). Builds take a file lock, so ranks started
together by ``torchrun`` build once and share the result.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import sysconfig
from pathlib import Path
from typing import Any, Iterator, Union

import attrs
import numpy as np

from plugformer.tasks.tokenizers import (
    BPETokenizer, ByteTokenizer, Tokenizer, TokenizerCall, make_tokenizer, settings_json,
    tokenizer_settings,
)

__all__ = [
    "CACHE_ENV", "CorpusFile", "TokenData", "cache_root", "find_files", "stdlib_files",
    "position_cut", "split_files", "load_tokens", "spec_string", "VERSION",
]

#: Where the built-in corpus's cache lives; default ``~/.cache/plugformer``.
CACHE_ENV = "PLUGFORMER_CACHE"
#: The folder beside user data that holds its caches.
CACHE_FOLDER = ".plugformer_cache"
#: Bumped when the stored layout changes, so old caches are not misread.
VERSION = 1
_CHUNK = 1 << 20


@attrs.frozen
class CorpusFile:
    """One file of a corpus: where it is and the name it is known by (relative to the root)."""

    path: Path
    name: str


def cache_root() -> Path:
    """``$PLUGFORMER_CACHE``, else ``~/.cache/plugformer``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "plugformer")


def stdlib_files() -> list[CorpusFile]:
    """The top-level ``.py`` modules of the running interpreter's standard library, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [CorpusFile(p, p.name) for p in sorted(root.glob("*.py")) if p.is_file()]


def find_files(path: Union[str, os.PathLike]) -> tuple[list[CorpusFile], Path]:
    """The files of ``path`` and the folder their cache goes in.

    ``path`` is a file, a directory (every file below it, hidden ones skipped) or a glob
    (``data/*.txt``, ``**`` allowed); files are sorted by name.

    Raises:
        FileNotFoundError: nothing matches ``path``.
    """
    text = os.fspath(path)
    given = Path(text).expanduser()
    if given.is_file():
        return [CorpusFile(given, given.name)], given.parent / CACHE_FOLDER
    if given.is_dir():
        found = [p for p in given.rglob("*") if p.is_file()
                 and not any(part.startswith(".") for part in p.relative_to(given).parts)]
        files = sorted((CorpusFile(p, p.relative_to(given).as_posix()) for p in found),
                       key=lambda f: f.name)
        if not files:
            raise FileNotFoundError(f"text: directory {text!r} holds no files")
        return files, given / CACHE_FOLDER
    if glob.has_magic(text):
        base = Path(".")
        for part in Path(text).expanduser().parts:
            if glob.has_magic(part):
                break
            base = base / part
        matched = [Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)]
        files = sorted((CorpusFile(p, p.relative_to(base).as_posix()) for p in matched
                        if p.is_file() and CACHE_FOLDER not in p.parts), key=lambda f: f.name)
        if not files:
            raise FileNotFoundError(f"text: no file matches {text!r}")
        return files, base / CACHE_FOLDER
    raise FileNotFoundError(f"text: {text!r} is not a file, a directory or a glob that matches "
                            f"files; give path='corpus.txt', 'folder/' or 'folder/*.txt', or "
                            f"corpus='stdlib' for the built-in corpus")


def position_cut(data: bytes, fraction: float) -> int:
    """Where the validation part of ``data`` starts: ``len - floor(len * fraction)``, moved
    forward past UTF-8 continuation bytes (at most three) so no character is cut in two."""
    cut = len(data) - int(len(data) * fraction)
    for _ in range(3):
        if cut < len(data) and 0x80 <= data[cut] < 0xC0:
            cut += 1
    return cut


def split_files(files: list[CorpusFile], sizes: list[int], fraction: float) -> set[int]:
    """Indices of the whole files held out for ``split="files"``: taken in the order of a hash
    of their names until they hold ``fraction`` of the bytes (at least one file, never all).

    Raises:
        ValueError: fewer than two files.
    """
    if len(files) < 2:
        raise ValueError(f"split='files' needs at least two files, got {len(files)}; use "
                         f"split='position' to hold out the end of every file")
    order = sorted(range(len(files)), key=lambda i: hashlib.sha256(files[i].name.encode()).hexdigest())
    held, total = set(), sum(sizes)
    for index in order[:-1]:
        if held and sum(sizes[i] for i in held) >= fraction * total:
            break
        held.add(index)
    return held


def _digest(files: list[CorpusFile]) -> tuple[str, list[int]]:
    """sha256 over the names, sizes and contents of ``files``, and their sizes."""
    digest = hashlib.sha256()
    sizes = []
    for file in files:
        size = file.path.stat().st_size
        digest.update(f"{file.name}\0{size}\0".encode())
        with open(file.path, "rb") as handle:
            for block in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(block)
        sizes.append(size)
    return digest.hexdigest(), sizes


@attrs.frozen
class TokenData:
    """The token streams of a corpus and what they were built from.

    Attributes:
        train, val: the training and validation streams, (N,) memory-mapped token ids.
        tokenizer: the tokenizer that wrote them.
        files: per file: ``name``, ``bytes``, the byte ranges ``train`` and ``val`` ([start,
            end) into the file) and the token ranges ``train_tokens`` and ``val_tokens``
            ([start, end) into the streams, end-of-text excluded).
        folder: the cache folder.
    """

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    files: list[dict[str, Any]]
    folder: Path


def load_tokens(files: list[CorpusFile], cache: Path, *,
                tokenizer: Union[str, TokenizerCall, Tokenizer] = "bytes",
                split: str = "position", val_fraction: float = 0.05) -> TokenData:
    """The token streams of ``files``: read from ``cache`` when built before, built otherwise.

    Raises:
        ValueError: a wrong split, fraction or tokenizer.
        OSError: the cache folder cannot be written (pass another ``cache_dir``).
    """
    if split not in ("position", "files"):
        raise ValueError(f"split must be 'position' or 'files', got {split!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    corpus_hash, sizes = _digest(files)
    settings = json.dumps({"version": VERSION, "corpus": corpus_hash, "split": split,
                           "val_fraction": val_fraction, "tokenizer": settings_json(tokenizer)},
                          sort_keys=True)
    folder = cache / f"text-{hashlib.sha256(settings.encode()).hexdigest()[:20]}"
    if not (folder / "meta.json").exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OSError(f"text: cannot create the token cache {folder} ({err.strerror}); "
                          f"pass cache_dir='a/writable/folder'") from err
        with _locked(folder / "build.lock"):
            if not (folder / "meta.json").exists():
                _build(files, sizes, folder, tokenizer, split, val_fraction, settings)
    return _open(folder, tokenizer)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no POSIX locks: concurrent builds still end in one complete folder
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ranges(files: list[CorpusFile], sizes: list[int], split: str,
            fraction: float) -> Iterator[tuple[CorpusFile, bytes, int]]:
    """Each file, its bytes and where its validation part starts."""
    held = split_files(files, sizes, fraction) if split == "files" else set()
    for index, file in enumerate(files):
        data = file.path.read_bytes()
        if split == "position":
            yield file, data, position_cut(data, fraction)
        else:
            yield file, data, 0 if index in held else len(data)


def _build(files: list[CorpusFile], sizes: list[int], folder: Path,
           tokenizer: Union[str, TokenizerCall, Tokenizer], split: str, fraction: float,
           settings: str) -> None:
    name, _ = tokenizer_settings(tokenizer)
    if name == "bpe" and not isinstance(tokenizer, Tokenizer):
        texts = (data[:cut].decode("utf-8", errors="replace")
                 for _, data, cut in _ranges(files, sizes, split, fraction))
        made = make_tokenizer(tokenizer, texts)
        _write_text(folder / "tokenizer.json", json.dumps(made.to_dict()))
    else:
        made = make_tokenizer(tokenizer)
    streams = {"train": folder / "train.bin.tmp", "val": folder / "val.bin.tmp"}
    counts = {"train": 0, "val": 0}
    entries = []
    with open(streams["train"], "wb") as train, open(streams["val"], "wb") as val:
        outputs = {"train": train, "val": val}
        for file, data, cut in _ranges(files, sizes, split, fraction):
            entry: dict[str, Any] = {"name": file.name, "bytes": len(data),
                                     "train": [0, cut], "val": [cut, len(data)]}
            for part, piece in (("train", data[:cut]), ("val", data[cut:])):
                ids = made.encode(piece) if piece else np.zeros(0, dtype=np.int64)
                start = counts[part]
                if ids.size:
                    ids = np.append(ids, made.eot_id).astype(made.dtype)
                    outputs[part].write(ids.tobytes())
                    counts[part] += ids.size
                entry[f"{part}_tokens"] = [start, start + max(ids.size - 1, 0)]
            entries.append(entry)
    for part, path in streams.items():
        os.replace(path, folder / f"{part}.bin")
    meta = {"settings": json.loads(settings), "tokenizer": made.describe(),
            "dtype": made.dtype.name, "tokens": counts, "files": entries}
    _write_text(folder / "meta.json", json.dumps(meta, indent=1))


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _open(folder: Path, tokenizer: Union[str, TokenizerCall, Tokenizer]) -> TokenData:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    if isinstance(tokenizer, Tokenizer):
        made = tokenizer
    elif tokenizer_settings(tokenizer)[0] == "bpe":
        saved = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        made = BPETokenizer.from_json(saved["model"], vocab=int(saved["vocab"]))
    else:
        made = ByteTokenizer()
    dtype = np.dtype(meta["dtype"])
    streams = {part: _memmap(folder / f"{part}.bin", dtype, meta["tokens"][part])
               for part in ("train", "val")}
    return TokenData(train=streams["train"], val=streams["val"], tokenizer=made,
                     files=meta["files"], folder=folder)


def _memmap(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    if count == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def spec_string(path: str) -> str:
    """``path`` quoted as a spec string."""
    escaped = path.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"
