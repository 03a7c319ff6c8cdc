"""Datasets as documents, documents as fixed-length token sequences, sequences as zarr shards.

A dataset spec (config `datasets.<name>`) names a text source (bundled corpus, local files, a
Hugging Face dataset) or random tokens. Its documents are tokenized lazily, packed into one
stream of `seq_len`-token sequences, and cut into shards of `sequences_per_shard` sequences:
shard i is always sequences [i*n, (i+1)*n) of that stream, so raising `n_shards` never changes
an existing shard, and a shard only reads as much text as it needs.

Every document carries a source label (its bundled domain, its file's name, or an `hf` record's
`label_field`), and a text shard stores each token's label next to it (`sources`): features of the
context (which domain a token comes from) read them.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import itertools
import json
import lzma
import random
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np

from neuron_census.atomic import atomic_path
from neuron_census.config import schema_defaults
from neuron_census.data.bundle import (
    ALL_DOMAINS, DOMAINS, JSONL_FIELD, MIN_DOCUMENT_CHARS, BlockTooLong, corpus_file, group_blocks, iter_blocks,
)
from neuron_census.data.tokenization import TextTokenizer
from neuron_census.errors import first_line

T = TypeVar("T")
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.xz")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.xz")
SHARD_KIND = "token_shard"
SHARD_FORMAT_VERSION = 1
READ_CHUNK_BYTES = 1 << 20
TOKENIZE_BATCH_DOCS = 64
TOKENIZE_BATCH_CHARS = 1 << 18  # the tokenizer takes about 700 bytes a character of a batch at its peak
SHARD_CHUNK_BYTES = 1 << 20
# Text is held a document at a time; a paragraph or JSON line beyond this many characters is refused as it is
# read (`max_document_chars`), and documents are tokenized in pieces of at most TOKENIZE_PIECE_CHARS.
MAX_DOCUMENT_CHARS = 1 << 26
TOKENIZE_PIECE_CHARS = 1 << 18

# The schema's dataset defaults, plus max_document_chars and drop_under_chars (not in the schema, so that older
# runs keep their params); the public functions fill them into specs that did not pass the config check.
DEFAULTS: dict[str, Any] = {**schema_defaults("$defs/dataset"), "max_document_chars": MAX_DOCUMENT_CHARS, "drop_under_chars": 0}


# --------------------------------------------------------------------------- documents


def iter_documents(spec: Mapping[str, Any], root: Path = Path("."), *, dataset: str = "<unnamed>") -> Iterator[str]:
    """Documents of a text dataset, in the dataset's fixed order, with its split applied."""
    yield from (text for text, _ in _documents_after({**DEFAULTS, **spec}, root, dataset, StreamCursor()))


class Origin(NamedTuple):
    """Where a document comes from: its source label (None: unlabelled) and where its stream stands after it
    (None for a source that cannot go on from a position)."""

    source: str | None
    position: Any = None


def _bundled_documents(spec: Mapping[str, Any], root: Path, dataset: str) -> Iterator[tuple[str, Origin]]:
    """The bundled corpus's documents of the dataset's domains (split applied, interleaved), each labelled
    with its domain. A `.txt.xz` domain file is read in the bundle's text format, a `.jsonl.xz` one (the code
    domains of other languages: whole source files) one document per record."""
    read = partial(_file_documents, field=JSONL_FIELD, errors=spec["encoding_errors"], min_chars=MIN_DOCUMENT_CHARS,
                   max_chars=spec["max_document_chars"])
    streams = []
    for domain in _domains(spec, dataset):
        path = corpus_file(domain, root)
        if not path.is_file():
            raise FileNotFoundError(f"bundled corpus file {path} is missing; run python -m neuron_census.data.bundle")
        labelled = zip(read(path), itertools.repeat(Origin(domain)))
        streams.append(apply_split(labelled, spec["split"], spec["heldout_every"]))
    yield from interleave(streams, spec["seed"])


def apply_split(documents: Iterable[T], split: str, heldout_every: int, start: int = 0) -> Iterator[T]:
    """Keep the train or heldout part of one stream: document i is heldout iff
    i % heldout_every == heldout_every - 1 (i counts the stream's non-empty documents; `start` of them
    were read before `documents` began)."""
    for i, doc in enumerate(documents, start=start):
        heldout = i % heldout_every == heldout_every - 1
        if split == "all" or (split == "heldout") == heldout:
            yield doc


def interleave(streams: list[Iterator[T]], seed: int) -> Iterator[T]:
    """Round-robin over streams (one document from each per round, in a seeded order per round);
    a stream that runs out drops out."""
    rng = random.Random(seed)
    active = list(range(len(streams)))
    while active:
        for i in rng.sample(active, len(active)):
            doc = next(streams[i], None)
            if doc is None:
                active.remove(i)
            else:
                yield doc


def corpus_texts(spec: Mapping[str, Any], root: Path, max_chars: int) -> Iterator[str]:
    """Train-split documents of a dataset, up to max_chars characters in all: tokenizers never see heldout text."""
    left = max_chars
    for doc in iter_documents({**spec, "split": "train"}, root):
        if left <= 0:
            return
        yield doc[:left]
        left -= len(doc)


def _domains(spec: Mapping[str, Any], name: str) -> list[str]:
    """The bundled domains a dataset reads: those it lists (any of ALL_DOMAINS; the schema knows their names),
    else the 8 English DOMAINS."""
    domains = spec.get("domains", DOMAINS)
    if len(set(domains)) != len(domains):  # the schema does not refuse a repeat, which would read a domain twice
        raise ValueError(f"dataset {name!r}: domains {domains} repeat a domain")
    unknown = [domain for domain in domains if domain not in ALL_DOMAINS]
    if unknown:  # for specs that did not pass the schema
        raise ValueError(f"dataset {name!r}: unknown bundled domains {unknown}; use any of {', '.join(ALL_DOMAINS)}")
    return list(domains)


def _file_paths(spec: Mapping[str, Any], root: Path, name: str) -> list[Path]:
    """Files matched by the spec's globs (each glob sorted, order of globs kept, no repeats)."""
    found: list[Path] = []
    for pattern in spec["paths"]:
        matches = _glob(pattern, root)
        if not matches:
            where = Path(pattern).anchor or root  # an absolute glob's anchor, as it is searched from
            raise FileNotFoundError(f"dataset {name!r}: no file matches {pattern!r} under {where}")
        found += [p for p in matches if p not in found]
    return found


def _glob(pattern: str, root: Path) -> list[Path]:
    """The files a glob matches, sorted: an absolute glob from its anchor, any other under root."""
    path = Path(root) / pattern  # an absolute pattern as it is
    anchor = Path(path.anchor) if path.is_absolute() else Path(".")
    return sorted(p for p in anchor.glob(str(path.relative_to(anchor))) if p.is_file())


def source_files(spec: Mapping[str, Any], root: Path = Path("."), *, dataset: str = "<unnamed>") -> list[Path]:
    """The local files a text dataset's documents come from: the bundled corpus files of its domains, the files
    its globs match, or an `hf` dataset's local data files (none for a hub dataset: its `revision` pins it)."""
    if spec["source"] == "bundled":
        return [corpus_file(domain, root) for domain in _domains(spec, dataset)]
    if spec["source"] == "files":
        return _file_paths(spec, root, dataset)
    if spec["source"] == "hf":
        patterns: list[str] = []
        _map_data_files(spec["hf"].get("data_files"), patterns.append)
        return sorted({path for pattern in patterns for path in _glob(pattern, root)})
    return []


def _map_data_files(files: Any, local: Callable[[str], Any]) -> Any:
    """An `hf.data_files` value (a string, list or mapping: the schema's types) with each local path or glob
    passed through `local`; URLs and everything else kept."""
    if isinstance(files, list):
        return [_map_data_files(value, local) for value in files]
    if isinstance(files, Mapping):
        return {key: _map_data_files(value, local) for key, value in files.items()}
    return local(files) if isinstance(files, str) and "://" not in files else files


def _file_documents(path: Path, field: str, errors: str, min_chars: int, max_chars: int, shortest: int = 0) -> Iterator[str]:
    """Documents of a plain-text file (blank-line blocks grouped to min_chars: the bundle format) or of a
    JSONL file (its records' `field` strings), those under `shortest` characters left out."""
    if path.name.endswith(JSONL_SUFFIXES):
        documents = _jsonl_documents(path, field, errors, max_chars)
    elif path.name.endswith(TEXT_SUFFIXES):
        documents = group_blocks(iter_blocks(read_text_chunks(path, errors), max_chars), min_chars)
    else:
        suffix = "".join(path.suffixes[-2:])
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use {', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)}")
    count = 0
    try:
        for count, doc in enumerate((doc for doc in documents if len(doc) >= shortest), start=1):
            yield doc
    except BlockTooLong as error:
        raise ValueError(f"{path}: {error} (after document {count}); raise the dataset's max_document_chars to read it") from None
    if count == 0:
        raise ValueError(f"{path}: file is empty or has no documents" + (f" of at least {shortest} characters" if shortest else ""))


def _jsonl_documents(path: Path, field: str, errors: str, max_chars: int) -> Iterator[str]:
    """One document per JSON line (its `field` string); blank lines and empty texts skipped."""
    for number, line in enumerate(_lines(read_text_chunks(path, errors), max_chars, path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: invalid JSON ({err.msg})") from None
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise ValueError(f"{path}:{number}: record has no string field {field!r}")
        if text.strip():
            yield text


def _lines(chunks: Iterable[str], max_chars: int, path: Path) -> Iterator[str]:
    """Lines of a text given in pieces; a line growing beyond `max_chars` is refused while it is read."""
    rest = ""
    number = 0
    too_long = f"a line exceeds {max_chars:,} characters; raise the dataset's max_document_chars to read it"
    for chunk in chunks:
        *lines, rest = (rest + chunk).split("\n")
        for line in lines:
            number += 1
            if len(line) > max_chars:
                raise ValueError(f"{path}:{number}: {too_long}")
            yield line
        if len(rest) > max_chars:
            raise ValueError(f"{path}:{number + 1}: {too_long}")
    if rest:
        yield rest


def read_text_chunks(path: Path, errors: str = "strict") -> Iterator[str]:
    """Decoded UTF-8 text of a (possibly .gz/.xz) file in pieces, with CRLF turned into LF; invalid UTF-8 is
    refused naming its byte offset in the uncompressed data (errors='strict') or replaced (errors='replace')."""
    if not path.is_file():
        raise FileNotFoundError(f"text file {path} does not exist")
    decoder = codecs.getincrementaldecoder("utf-8")(errors)
    opener = lzma.open if path.name.endswith(".xz") else gzip.open if path.name.endswith(".gz") else open
    fed, held = 0, ""
    try:
        with opener(path, "rb") as handle:
            while True:
                data = handle.read(READ_CHUNK_BYTES)
                try:
                    text = held + decoder.decode(data, final=not data)
                except UnicodeDecodeError as err:
                    offset = fed + len(data) - len(err.object) + err.start
                    message = f"invalid UTF-8 at byte offset {offset} (set encoding_errors: replace to substitute it)"
                    raise ValueError(f"{path}: {message}") from None
                fed += len(data)
                held = "\r" if data and text.endswith("\r") else ""  # a CR whose LF may open the next piece
                if text := text[: len(text) - len(held)]:
                    yield text.replace("\r\n", "\n")
                if not data:
                    return
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise ValueError(f"{path}: cannot read compressed or raw data ({err})") from None


def _field(record: Mapping[str, Any], keys: tuple[str, ...], name: str, path: str, key: str) -> Any:
    """The value of a record's dotted field (`meta.pile_set_name`); a missing one is refused naming `key`,
    the config key that asked for it."""
    value: Any = record
    for part in keys:
        if not isinstance(value, Mapping) or part not in value:
            raise ValueError(f"dataset {name!r}: hf dataset {path!r} has no field {'.'.join(keys)!r} ({key})")
        value = value[part]
    return value


def _hf_documents(
    spec: Mapping[str, Any], root: Path, name: str, resume: Mapping[str, Any] | None
) -> Iterator[tuple[str, Origin]]:
    """Streamed non-empty records of a Hugging Face dataset (never running remote code), each with its
    `label_field`'s value (the Pile's `meta.pile_set_name`; else the fixed `label`, else none) and where the
    stream stands after it: the dataset's `state_dict` and the count of non-empty records so far. From such a
    position (`resume`) the stream goes on without reading the data files before it."""
    import datasets

    hf = {**schema_defaults("$defs/dataset/hf"), **spec["hf"]}
    path, field, longest, shortest = hf["path"], hf["text_field"], spec["max_document_chars"], spec["drop_under_chars"]
    if not Path(path).is_absolute() and (Path(root) / path).exists():
        path = str(Path(root) / path)
    try:
        data_files = _map_data_files(hf.get("data_files"), lambda file: str(Path(root) / file))  # an absolute one stays
        stream = datasets.load_dataset(path, name=hf.get("name"), split=hf["split"], data_files=data_files,
                                       revision=hf.get("revision"), streaming=True)
    except Exception as err:  # datasets raises many types; report them in one line
        raise ValueError(f"dataset {name!r}: cannot load hf dataset {path!r}: {first_line(err)}") from err
    count = 0
    if resume is not None:
        stream.load_state_dict(resume["state"])
        count = int(resume["records"])
    # hf.where: {dotted field: [accepted values]}, e.g. `{meta.pile_set_name: [Wikipedia (en), DM Mathematics]}`
    where = {tuple(str(field).split(".")): set(values) for field, values in (hf.get("where") or {}).items()}
    label = tuple(hf["label_field"].split(".")) if hf.get("label_field") else None
    text_keys = tuple(field.split("."))
    for record in stream:
        if not all(_field(record, keys, name, path, "hf.where") in values for keys, values in where.items()):
            continue
        text = _field(record, text_keys, name, path, "hf.text_field")
        if not isinstance(text, str):
            raise ValueError(f"dataset {name!r}: hf dataset {path!r} has no string field {field!r}")
        if len(text) > longest:
            raise ValueError(f"dataset {name!r}: hf dataset {path!r}: a record exceeds {longest:,} characters (after record "
                             f"{count}); raise the dataset's max_document_chars to read it")
        if text.strip() and len(text) >= shortest:
            count += 1
            source = hf.get("label") if label is None else str(_field(record, label, name, path, "hf.label_field"))
            yield text, Origin(source, {"state": stream.state_dict(), "records": count, "datasets": datasets.__version__})
    if count == 0:
        raise ValueError(f"dataset {name!r}: hf dataset {path!r} has no documents")


# --------------------------------------------------------------------------- packing


@dataclass(frozen=True, eq=False)
class StreamCursor:
    """Where a text dataset's packed token stream stands after some sequences, so that the next shard's job
    starts there instead of tokenizing every earlier shard's text again: the sequences cut, the documents (of the
    split) read, whether a non-empty one was among them (the next is then preceded by EOS), and the tokens read
    but not yet cut (`carry`, int32: a long document's rest can be millions of tokens) with their source codes
    (`carry_sources`, int16 indices into `source_names`, the labels in the order they were met).

    `source`: where a source that can go on from a position (an `hf` stream) stood, as JSON; the next shard
    then reads no earlier document. Without it they are read again and skipped."""

    sequences: int = 0
    documents: int = 0
    started: bool = False
    carry: np.ndarray | tuple[int, ...] = ()
    source: str | None = None
    carry_sources: np.ndarray | tuple[int, ...] | None = None  # None: every carried token unlabelled
    source_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        carry = np.asarray(self.carry, dtype=np.int32)  # a view of the packed stream, or a tuple made into one
        codes = np.full(len(carry), NO_SOURCE, np.int16) if self.carry_sources is None else np.asarray(self.carry_sources, np.int16)
        if codes.shape != carry.shape:
            raise ValueError(f"a stream cursor carries {len(carry)} tokens but {len(codes)} source codes")
        for array in (carry, codes):
            array.flags.writeable = False
        object.__setattr__(self, "carry", carry)
        object.__setattr__(self, "carry_sources", codes)
        object.__setattr__(self, "source_names", tuple(self.source_names))


NO_SOURCE = -1  # the source code of BOS and of unlabelled text
MAX_SOURCES = int(np.iinfo(np.int16).max) + 1  # distinct labels a stream can tell apart (int16 codes)


def pack_stream(
    docs_token_ids: Iterable[tuple[list[int] | np.ndarray, Origin]], seq_len: int, bos_id: int | None,
    eos_id: int | None, cursor: StreamCursor = StreamCursor(),
) -> Iterator[tuple[np.ndarray, np.ndarray, Callable[[], StreamCursor]]]:
    """Concatenate documents (eos between them when eos_id is set), cut into chunks of seq_len minus one for
    bos, prepend bos: int32 arrays of seq_len; the incomplete tail stays unread, and empty documents add
    nothing (not even a separator). Goes on from `cursor` (the documents after `cursor.documents`, each with
    its `Origin`), yielding each sequence with its tokens' source codes (int16 indices into the cursor's
    `source_names`; NO_SOURCE at BOS and in unlabelled text; an EOS separator takes the document it opens)
    and a function giving the cursor just after it (built only when asked for: its carry can be a long
    document's remaining tokens)."""
    body = seq_len - (bos_id is not None)  # the schema's seq_len >= 2 leaves at least one token
    head = np.array([] if bos_id is None else [bos_id], dtype=np.int32)
    head_sources = np.full(len(head), NO_SOURCE, dtype=np.int16)
    parts: list[np.ndarray] = [np.asarray(cursor.carry, dtype=np.int32)]
    labels: list[np.ndarray] = [np.asarray(cursor.carry_sources, dtype=np.int16)]
    codes = {name: code for code, name in enumerate(cursor.source_names)}
    held = len(cursor.carry)
    sequences, documents, started = cursor.sequences, cursor.documents, cursor.started
    position: Any = cursor.source

    def cut() -> Iterator[tuple[np.ndarray, np.ndarray, Callable[[], StreamCursor]]]:
        nonlocal parts, labels, held, sequences
        stream, sources = np.concatenate(parts), np.concatenate(labels)
        n_full = len(stream) // body
        for k in range(n_full):
            sequences += 1
            rest = slice((k + 1) * body, None)
            after = partial(_cursor, sequences, documents, started, stream[rest], position, sources[rest], codes, len(codes))
            piece = slice(k * body, (k + 1) * body)
            yield np.concatenate([head, stream[piece]]), np.concatenate([head_sources, sources[piece]]), after
        parts, labels = [stream[n_full * body :]], [sources[n_full * body :]]
        held = len(parts[0])

    if held >= body:  # a long document's carried rest fills sequences before any further document is read
        yield from cut()
    for ids, (label, position) in docs_token_ids:
        documents += 1
        if len(ids) == 0:
            continue
        if label is not None and label not in codes:  # a new label gets the next code
            if len(codes) >= MAX_SOURCES:
                raise ValueError(f"a text stream has more than {MAX_SOURCES} distinct source labels (at {label!r}); "
                                 "label by a coarser field")
            codes[label] = len(codes)
        code = NO_SOURCE if label is None else codes[label]
        arr = np.asarray(ids, dtype=np.int32)
        if eos_id is not None and started:
            arr = np.insert(arr, 0, eos_id)  # the separator takes the label of the document it opens
        started = True
        parts.append(arr)
        labels.append(np.full(len(arr), code, dtype=np.int16))
        held += len(arr)
        if held >= body:
            yield from cut()


def _cursor(
    sequences: int, documents: int, started: bool, carry: np.ndarray, position: Any, carry_sources: np.ndarray,
    codes: dict[str, int], n_names: int,
) -> StreamCursor:
    """A cursor with the source position as JSON (a string as it is; None where it does not encode) and the
    first `n_names` labels of `codes` (labels are only ever added, so these are the ones met by then)."""
    if position is not None and not isinstance(position, str):
        try:
            position = json.dumps(position, sort_keys=True)
        except (TypeError, ValueError):
            position = None
    return StreamCursor(sequences, documents, started, carry, position, carry_sources, tuple(itertools.islice(codes, n_names)))


def _token_batches(
    documents: Iterable[tuple[str, T]], tokenizer: TextTokenizer
) -> Iterator[tuple[list[int] | np.ndarray, T]]:
    """Token ids per document (with its position, passed through), encoded in batches only when the
    consumer needs them. A document longer than TOKENIZE_PIECE_CHARS is encoded a piece at a time
    (`text_pieces`), so the tokenizer's memory is bounded by a piece, not by the longest document."""
    batch: list[tuple[str, T]] = []
    for text, position in documents:
        long = len(text) > TOKENIZE_PIECE_CHARS
        if not long:
            batch.append((text, position))
        full = len(batch) >= TOKENIZE_BATCH_DOCS or sum(len(doc) for doc, _ in batch) >= TOKENIZE_BATCH_CHARS
        if batch and (long or full):  # a long document goes after the batch before it
            yield from zip(tokenizer.encode_batch([doc for doc, _ in batch]), (p for _, p in batch))
            batch = []
        if long:
            yield encode_in_pieces(text, tokenizer, TOKENIZE_PIECE_CHARS), position
    if batch:
        yield from zip(tokenizer.encode_batch([doc for doc, _ in batch]), (p for _, p in batch))


_PIECE_CUT = re.compile(r"\s(?=\S)")  # a whitespace character followed by a word: what starts a pre-token
PIECE_CONTEXT_CHARS = 64


def encode_in_pieces(text: str, tokenizer: TextTokenizer, size: int) -> np.ndarray:
    """Token ids (int32) of `text`, encoded `size` characters at a time (`text_pieces`). Each piece after the
    first is encoded behind the end of the one before, whose tokens are then dropped by their character
    offsets: so a tokenizer that marks the start of a text (sentencepiece's prefix space) reads each cut as
    the middle of the text it is, and the joined ids equal one pass over the whole text (tested). Only a
    run of over size/2 characters without a space is cut inside a word, where the tokens may differ."""
    pieces = text_pieces(text, size)
    parts = [np.asarray(tokenizer.encode(pieces[0]), dtype=np.int32)]
    for previous, piece in zip(pieces, pieces[1:]):
        if not _PIECE_CUT.match(piece):  # a hard cut inside a word: the pieces as they are, no text lost
            parts.append(np.asarray(tokenizer.encode(piece), dtype=np.int32))
            continue
        context = previous[-PIECE_CONTEXT_CHARS:]
        encoding = tokenizer.backend.encode(context + piece, add_special_tokens=False)
        kept = [token for token, (start, _) in zip(encoding.ids, encoding.offsets) if start >= len(context)]
        parts.append(np.asarray(kept, dtype=np.int32))
    return np.concatenate(parts)


def text_pieces(text: str, size: int) -> list[str]:
    """`text` cut into pieces of at most `size` characters, each cut just before the last whitespace character
    that precedes a non-space in the piece's second half (a hard cut where there is none). Byte-level BPE
    (GPT-2, OPT, Pythia) and sentencepiece tokenizers start a pre-token there, so the pieces' tokens joined
    equal the whole text's."""
    pieces = []
    start = 0
    while len(text) - start > size:
        cuts = [match.start() for match in _PIECE_CUT.finditer(text, start + size // 2, start + size)]
        end = cuts[-1] if cuts else start + size
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


def _documents_after(spec: Mapping[str, Any], root: Path, name: str, cursor: StreamCursor) -> Iterator[tuple[str, Origin]]:
    """The documents of a text dataset after `cursor` (split applied), each with its `Origin`; those of a cursor
    without a usable saved position (all bundled ones) are counted off from the start. An hf stream's split
    counter runs over the whole stream, a file's starts at 0 in every file."""
    if spec["source"] not in TEXT_SOURCES:
        raise ValueError(f"dataset {name!r}: source '{spec['source']}' has no text documents")
    resume = json.loads(cursor.source) if cursor.source else None
    if resume is not None and (stale := _stale_position(spec, root, name, resume)):
        print(f"dataset {name!r}: {stale}; reading on from the start", file=sys.stderr)
        resume = None
    if spec["source"] == "bundled":
        documents = _bundled_documents(spec, root, name)
    elif spec["source"] == "hf":
        records = int(resume["records"]) if resume else 0
        documents = apply_split(_hf_documents(spec, root, name, resume), spec["split"], spec["heldout_every"], records)
    else:
        documents = _files_documents(spec, root, name, resume)
    yield from itertools.islice(documents, cursor.documents if resume is None else 0, None)


def _files_documents(
    spec: Mapping[str, Any], root: Path, name: str, resume: Mapping[str, Any] | None
) -> Iterator[tuple[str, Origin]]:
    """Documents of a `files` dataset (split applied) from the start or from a saved position, each labelled
    with its file's name without its suffixes, with the position after it: the file's index and path and the
    count of its non-empty documents."""
    read = partial(_file_documents, field=spec["text_field"], errors=spec["encoding_errors"],
                   min_chars=spec["min_document_chars"], max_chars=spec["max_document_chars"], shortest=spec["drop_under_chars"])
    paths = _file_paths(spec, root, name)
    first, skipped = (int(resume["file"]), int(resume["records"])) if resume else (0, 0)
    for index in range(first, len(paths)):
        start = skipped if index == first else 0
        documents = itertools.islice(read(paths[index]), start, None)
        suffix = next((suffix for suffix in TEXT_SUFFIXES + JSONL_SUFFIXES if paths[index].name.endswith(suffix)), "")
        label = paths[index].name.removesuffix(suffix)  # `python.jsonl.gz` -> `python`
        numbered = ((doc, Origin(label, {"file": index, "path": str(paths[index]), "records": n}))
                    for n, doc in enumerate(documents, start + 1))
        yield from apply_split(numbered, spec["split"], spec["heldout_every"], start=start)


def _stale_position(spec: Mapping[str, Any], root: Path, name: str, resume: Mapping[str, Any]) -> str | None:
    """Why a saved position cannot be used now (None if it can): another `datasets` release saved it, or
    the dataset's globs no longer find its file at its index."""
    if spec["source"] == "hf":
        import datasets

        if resume.get("datasets") != datasets.__version__:
            return f"stream position saved by datasets {resume.get('datasets')}, not {datasets.__version__}"
        return None
    paths = _file_paths(spec, root, name)
    index = int(resume.get("file", -1))
    if not 0 <= index < len(paths) or str(paths[index]) != resume.get("path"):
        return f"file {index} of the saved position is no longer {resume.get('path')!r}"
    return None


def planted_shard(spec: Mapping[str, Any], shard: int, name: str) -> np.ndarray:
    """Rows of a planted recipe's designed token data, on which every planted role holds exactly."""
    from neuron_census.testing.planted import designed_tokens

    tokens = designed_tokens(spec["recipe"])
    seq_len, per_shard = spec["seq_len"], spec["sequences_per_shard"]
    start, stop = shard * per_shard, (shard + 1) * per_shard
    if seq_len != tokens.shape[1] or stop > len(tokens):
        raise ValueError(f"dataset {name!r}: recipe {spec['recipe']!r} designs {len(tokens)} sequences of {tokens.shape[1]} "
                         f"tokens; shard {shard} asks for sequences {start}..{stop - 1} of {seq_len}")
    return tokens[start:stop].astype(np.int32)


def shard_sequences(
    spec: Mapping[str, Any], tokenizer: TextTokenizer, shard: int, root: Path = Path("."), *, dataset: str = "<unnamed>"
) -> np.ndarray:
    """Token ids (int32, sequences_per_shard x seq_len) of one shard of a dataset."""
    spec = {**DEFAULTS, **spec}
    if not 0 <= shard < spec["n_shards"]:
        raise ValueError(f"dataset {dataset!r}: shard {shard!r} is outside range(n_shards={spec['n_shards']})")
    if spec["source"] == "random_tokens":
        return random_shard(spec, tokenizer, shard, dataset)
    if spec["source"] == "planted":
        return planted_shard(spec, shard, dataset)
    return text_shard(spec, tokenizer, shard, root, name=dataset).tokens


class TextShard(NamedTuple):
    tokens: np.ndarray  # [sequences, seq_len] int32
    sources: np.ndarray  # [sequences, seq_len] int16: each token's source code, an index into end.source_names
    end: StreamCursor  # the stream's cursor after the shard


def text_shard(
    spec: Mapping[str, Any], tokenizer: TextTokenizer, shard: int, root: Path = Path("."), *, name: str,
    cursor: StreamCursor = StreamCursor(),
) -> TextShard:
    """One shard of a text dataset, its tokens' source labels and the stream's cursor after it. From
    `cursor` (where the previous shard ended: its `stream_end`) only this shard's text is tokenized, and an
    `hf` stream reads on from there without the earlier data files; from the start, every earlier shard's
    text is read again, as the same sequences."""
    spec = {**DEFAULTS, **spec}
    seq_len, per_shard = spec["seq_len"], spec["sequences_per_shard"]
    start, stop = shard * per_shard, (shard + 1) * per_shard
    if cursor.sequences > start:
        raise ValueError(f"dataset {name!r}: a stream cursor after sequence {cursor.sequences} cannot start shard {shard}")
    out = np.empty((per_shard, seq_len), dtype=np.int32)
    sources = np.empty((per_shard, seq_len), dtype=np.int16)
    token_ids = _token_batches(_documents_after(spec, root, name, cursor), tokenizer)
    produced = cursor.sequences
    for seq, seq_sources, after in pack_stream(token_ids, seq_len, tokenizer.bos_id, tokenizer.eos_id, cursor):
        produced += 1
        if produced > start:
            out[produced - 1 - start] = seq
            sources[produced - 1 - start] = seq_sources
        if produced == stop:
            return TextShard(out, sources, after())
    raise ValueError(f"dataset {name!r} yields only {produced} sequences of length {seq_len}; "
                     f"shard {shard} needs sequences {start}..{stop - 1}")


TEXT_SOURCES = ("bundled", "files", "hf")  # datasets read as a stream of documents (their shards chain)


def random_shard(spec: Mapping[str, Any], tokenizer: TextTokenizer, shard: int, name: str) -> np.ndarray:
    """Uniform random non-special ids in [first_id, vocab_size), bos first; seeded by (seed, shard), so that
    every shard is reproducible on its own."""
    first_id = spec["first_id"]
    specials = np.fromiter(tokenizer.special_ids, dtype=np.int64)
    allowed = np.setdiff1d(np.arange(first_id, tokenizer.vocab_size, dtype=np.int64), specials)
    if len(allowed) == 0:
        raise ValueError(f"dataset {name!r}: no non-special token ids in [{first_id}, {tokenizer.vocab_size})")
    if spec["seed"] < 0:  # the schema takes any integer seed (a bundled dataset's shuffle does); numpy's none below 0
        raise ValueError(f"dataset {name!r}: seed must be an integer >= 0, got {spec['seed']!r}")
    rng = np.random.default_rng(np.random.SeedSequence([spec["seed"], shard]))
    has_bos = tokenizer.bos_id is not None
    shape = (spec["sequences_per_shard"], spec["seq_len"] - has_bos)
    body = allowed[rng.integers(0, len(allowed), size=shape)].astype(np.int32)
    return np.insert(body, 0, tokenizer.bos_id, axis=1) if has_bos else body


# --------------------------------------------------------------------------- shard store


def _tokens_digest(tokens: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i4").tobytes()).hexdigest()


def _open_shard(path: str | Path) -> Any:
    """A token shard's zarr group, read-only (zarr is imported only by the jobs that read or write shards)."""
    import zarr

    return zarr.open_group(store=str(path), mode="r")


def _unreadable(path: str | Path, err: Exception) -> ValueError:
    """A missing or damaged shard store in one line (zarr/numcodecs raise many types for damaged stores)."""
    reason = f"{type(err).__name__}: {err}".splitlines()[0]
    return ValueError(f"token shard {path} is unreadable ({reason})")


def write_token_shard(
    path: str | Path, tokens: np.ndarray, *, tokenizer: TextTokenizer, dataset: str, shard: int,
    stream_end: tuple[StreamCursor, str] | None = None, text_version: str | None = None,
    sources: tuple[np.ndarray, Sequence[str]] | None = None,
) -> None:
    """Atomically write a zarr v3 group with array `tokens` (int32, chunked by rows) and attrs.

    `sources`: each token's source code (int16, the shape of `tokens`; NO_SOURCE where unlabelled) and the
    labels the codes index, written as array `sources` and attribute `source_names`. `stream_end`: a text
    dataset's cursor after this shard and the fingerprint of the dataset's settings it belongs to; the
    cursor's carried tokens and their source codes go into arrays `stream_carry` and `stream_carry_sources`.
    `text_version`: a fingerprint of the files the text was read from (`inputs.files_fingerprint`), so
    shards of two versions are never merged."""
    import zarr

    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.size == 0:
        raise ValueError(f"token shard {path}: tokens must be a non-empty 2-D array, got {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"token shard {path}: tokens must be integers, got {tokens.dtype}")
    if tokens.min() < 0 or tokens.max() >= tokenizer.vocab_size:
        raise ValueError(f"token shard {path}: ids outside [0, {tokenizer.vocab_size}) of tokenizer {tokenizer.name!r}")
    tokens = tokens.astype(np.int32)
    n_seq, seq_len = tokens.shape
    if sources is not None:
        codes, names = np.asarray(sources[0]), [str(name) for name in sources[1]]
        if codes.shape != tokens.shape or not NO_SOURCE <= int(codes.min()) <= int(codes.max()) < len(names):
            raise ValueError(f"token shard {path}: source codes must be the tokens' shape and index its {len(names)} source names")
    rows = max(1, min(n_seq, SHARD_CHUNK_BYTES // (4 * seq_len)))
    has_bos = tokenizer.bos_id is not None and bool(np.all(tokens[:, 0] == tokenizer.bos_id))
    attrs = {
        "kind": SHARD_KIND, "format_version": SHARD_FORMAT_VERSION, "tokenizer": tokenizer.name,
        "tokenizer_fingerprint": tokenizer.fingerprint, "dataset": dataset, "shard": int(shard), "seq_len": int(seq_len),
        "n_sequences": int(n_seq), "bos_id": tokenizer.bos_id, "has_bos": has_bos, "vocab_size": tokenizer.vocab_size,
        "tokens_sha256": _tokens_digest(tokens), "text_version": text_version,
    }
    with atomic_path(path) as tmp:
        group = zarr.open_group(store=str(tmp), mode="w", zarr_format=3)
        group.create_array("tokens", data=tokens, chunks=(rows, seq_len))
        if sources is not None:
            group.create_array("sources", data=codes.astype(np.int16), chunks=(rows, seq_len))
            attrs["source_names"] = names
        if stream_end is not None:
            cursor, stream = stream_end
            carry_chunks = (max(1, len(cursor.carry)),)
            group.create_array("stream_carry", data=np.asarray(cursor.carry, np.int32), chunks=carry_chunks)
            group.create_array("stream_carry_sources", data=np.asarray(cursor.carry_sources, np.int16), chunks=carry_chunks)
            attrs["stream_end"] = {
                "sequences": cursor.sequences, "documents": cursor.documents, "started": cursor.started,
                "source": cursor.source, "stream": stream, "source_names": list(cursor.source_names),
            }
        group.attrs.update(attrs)


def read_stream_end(path: str | Path, stream: str) -> StreamCursor | None:
    """The cursor a token shard recorded at its end, if it recorded one for the dataset settings `stream`."""
    group = _open_shard(path)
    end = dict(group.attrs).get("stream_end")
    if not end or end.get("stream") != stream or "stream_carry" not in group:
        return None
    codes = group["stream_carry_sources"][...] if "stream_carry_sources" in group else None
    return StreamCursor(end["sequences"], end["documents"], end["started"], group["stream_carry"][...], end.get("source"),
                        codes, end.get("source_names", ()))


def read_token_sources(path: str | Path) -> tuple[np.ndarray, tuple[str, ...]] | None:
    """A token shard's per-token source codes (int16; NO_SOURCE where unlabelled) and the labels they index;
    None for a shard without labels (random tokens, or one written before shards kept them)."""
    group = _open_shard(path)
    if "sources" not in group:
        return None
    return np.asarray(group["sources"][...], dtype=np.int16), tuple(dict(group.attrs).get("source_names", ()))


def token_shard_shape(path: str | Path) -> tuple[int, int]:
    """(sequences, seq_len) of a token shard, from its attributes alone (`read_token_shard` checks them)."""
    try:
        attrs = dict(_open_shard(path).attrs)
        return int(attrs["n_sequences"]), int(attrs["seq_len"])
    except Exception as err:  # a missing or damaged store: the same one line as reading it
        raise _unreadable(path, err) from None


def read_token_shard(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Tokens and attrs of a token shard, checked for kind, version, shape, chunks and checksum."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"token shard {path} does not exist")
    try:
        group = _open_shard(path)
        attrs = dict(group.attrs)
        array = group["tokens"]
        complete = array.nchunks_initialized == array.nchunks
        tokens = np.asarray(array[...])
    except Exception as err:
        raise _unreadable(path, err) from None
    if attrs.get("kind") != SHARD_KIND or attrs.get("format_version") != SHARD_FORMAT_VERSION:
        raise ValueError(f"token shard {path}: expected kind {SHARD_KIND!r} version {SHARD_FORMAT_VERSION}, "
                         f"got {attrs.get('kind')!r} version {attrs.get('format_version')!r}")
    expected = (attrs.get("n_sequences"), attrs.get("seq_len"))
    if tokens.shape != expected or tokens.dtype != np.int32:
        raise ValueError(f"token shard {path}: tokens are {tokens.dtype}{tokens.shape}, attrs say int32{expected}")
    if not complete:
        raise ValueError(f"token shard {path} is truncated: some chunks of 'tokens' are missing")
    if attrs.get("tokens_sha256") not in (None, _tokens_digest(tokens)):
        raise ValueError(f"token shard {path}: tokens do not match their stored sha256")
    return tokens, attrs
