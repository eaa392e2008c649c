"""Conversion inputs: expanding files, directories and globs on any fsspec URI, and reading
documents out of them.

- plain text (any other extension): the whole file is one document, raw bytes (invalid UTF-8
  is kept: the model reads bytes, not characters);
- .jsonl / .jsonl.gz / .jsonl.zst (also .json*): one document per line, from `text_field`;
- .parquet: one document per row, from the `text_field` column.
Strings are stored as UTF-8; bytes values are stored as they are. Empty documents are dropped.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec

_GLOB_CHARS = "*?["


class InputError(ValueError):
    """A problem with the content of an input, already phrased with its file and line."""


@dataclass(frozen=True)
class InputFile:
    uri: str
    size: int

    @property
    def kind(self) -> str:
        name = self.uri.lower()
        for ext in (".gz", ".zst", ".zstd"):
            name = name.removesuffix(ext)
        if name.endswith((".jsonl", ".json", ".ndjson")):
            return "jsonl"
        return "parquet" if name.endswith(".parquet") else "text"


@dataclass
class ReadStats:
    """What reading skipped: bad lines (with --skip-bad) and whole inputs, with reasons."""

    bad_lines: int = 0
    empty_documents: int = 0
    skipped_inputs: list[tuple[str, str]] = field(default_factory=list)


def expand_inputs(specs: list[str]) -> list[InputFile]:
    """Every file named by the specs, sorted by URI so the corpus order is the same on every run."""
    found: dict[str, int] = {}
    for spec in specs:
        fs, path = fsspec.core.url_to_fs(spec)
        if any(c in path for c in _GLOB_CHARS):
            infos = {p: i for p, i in fs.glob(path, detail=True).items() if i["type"] == "file"}
            if not infos:
                raise FileNotFoundError(f"{spec}: no file matches this pattern")
        elif fs.isdir(path):
            infos = fs.find(path, detail=True)  # sizes come with the listing: no stat per file
        elif fs.isfile(path):
            infos = {path: fs.info(path)}
        else:
            raise FileNotFoundError(f"{spec}: no such file or directory")
        keep_plain = "://" not in spec  # plain local paths stay plain in the manifest
        for p, info in infos.items():
            uri = p if keep_plain else fs.unstrip_protocol(p)
            found[uri] = int(info.get("size") or 0)
    if not found:
        raise ValueError(f"no input files in {specs} (empty corpus)")
    return [InputFile(uri, size) for uri, size in sorted(found.items())]


def _as_bytes(value, where: str, text_field: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", errors="surrogateescape")
    if isinstance(value, bytes):
        return value
    raise InputError(f"{where}: field {text_field!r} is {type(value).__name__}, expected a string")


def _lines(fh, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Lines of a binary stream; zstd readers cannot iterate lines themselves."""
    rest = b""
    while block := fh.read(chunk):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


class _CheckedZstd:
    """A .zst file's decompressed bytes (frames one after another) that raises at the end when the
    last frame is incomplete: a file cut at a block or frame boundary decodes cleanly up to the cut,
    and without this check would convert as a shorter corpus."""

    def __init__(self, raw, uri: str):
        import zstandard

        self.raw, self.uri, self.codec = raw, uri, zstandard.ZstdDecompressor()
        self.frame, self.fed = self.codec.decompressobj(), False

    def read(self, size: int) -> bytes:
        while True:
            data = self.raw.read(size)
            if not data:
                if self.fed and not self.frame.eof:
                    raise EOFError("the zstd stream ends inside a frame")
                return b""
            out = []
            while data:
                out.append(self.frame.decompress(data))
                self.fed = True
                if self.frame.eof:
                    data = self.frame.unused_data
                    self.frame, self.fed = self.codec.decompressobj(), False
                else:
                    data = b""
            if joined := b"".join(out):
                return joined

    def close(self) -> None:
        self.raw.close()


def _open_text_stream(f: InputFile):
    if f.uri.endswith((".zst", ".zstd")):
        return contextlib.closing(_CheckedZstd(fsspec.open(f.uri, "rb").open(), f.uri))
    return fsspec.open(f.uri, "rb", compression="infer")


def _jsonl(f: InputFile, text_field: str, skip_bad: bool, stats: ReadStats) -> Iterator[bytes]:
    with _open_text_stream(f) as fh:
        for lineno, line in enumerate(_lines(fh), start=1):
            if not line.strip():
                continue
            where = f"{f.uri}:{lineno}"
            try:
                try:
                    obj = json.loads(line)
                except ValueError as err:
                    raise InputError(f"{where}: not valid JSON ({err})") from None
                if not isinstance(obj, dict) or text_field not in obj:
                    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
                    raise InputError(
                        f"{where}: no text field {text_field!r} (found {keys}); set --text-field"
                    )
                value = _as_bytes(obj[text_field], where, text_field)
            except InputError:
                if not skip_bad:
                    raise
                stats.bad_lines += 1
                continue
            yield value


def _parquet(f: InputFile, text_field: str) -> Iterator[bytes]:
    import pyarrow.parquet as pq

    with fsspec.open(f.uri, "rb") as fh:
        pf = pq.ParquetFile(fh)
        if text_field not in pf.schema_arrow.names:
            raise InputError(
                f"{f.uri}: no text column {text_field!r} (columns {pf.schema_arrow.names}); set --text-field"
            )
        row = 0
        for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                row += 1
                if value is not None:
                    yield _as_bytes(value, f"{f.uri}: row {row}", text_field)


def read_documents(f: InputFile, text_field: str, skip_bad: bool, stats: ReadStats) -> Iterator[bytes]:
    """Documents of one input. An unreadable input is an error naming it; with skip_bad it is
    recorded in stats.skipped_inputs instead (documents already yielded from it stay)."""
    try:
        if f.kind == "text" and "://" not in f.uri:
            with open(f.uri, "rb") as fh:  # fsspec's per-open bookkeeping costs more than a small file
                docs: Iterator[bytes] = iter([fh.read()])
        elif f.kind == "text":
            with fsspec.open(f.uri, "rb") as fh:
                docs = iter([fh.read()])
        elif f.kind == "jsonl":
            docs = _jsonl(f, text_field, skip_bad, stats)
        else:
            docs = _parquet(f, text_field)
        empty = True
        for doc in docs:
            if doc:
                empty = False
                yield doc
            else:
                stats.empty_documents += 1
        if empty:
            stats.skipped_inputs.append((f.uri, "no documents"))
    except InputError:
        raise
    except Exception as err:  # OSError, gzip/zstd/parquet decoding errors: the file is unreadable
        cut = isinstance(err, EOFError)  # gzip: "Compressed file ended before the end-of-stream marker"
        message = f"{f.uri}: {'truncated' if cut else 'unreadable'} ({type(err).__name__}: {err})".replace(
            "\n", " "
        )
        if not skip_bad:
            raise ValueError(message) from None
        stats.skipped_inputs.append((f.uri, message))
