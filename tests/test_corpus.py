"""Documents, packing, shards and the bundled corpus, checked against exact values."""

from __future__ import annotations

import dataclasses
import gzip
import json
import lzma
import random
import re
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from neuron_census.config import ConfigError, validate_config, with_figures
from neuron_census.data.bundle import (
    ALL_DOMAINS,
    CODE_DOMAINS,
    DOMAIN_SOURCES,
    DOMAINS,
    LANGUAGE_DOMAINS,
    MULTI_DOMAIN_BUDGET_BYTES,
    build,
    choose_documents,
    code_index,
    corpus_file,
    group_blocks,
    iter_blocks,
    read_checksums,
    resources_dir,
    source_files,
)
from neuron_census.data.corpus import (
    Origin,
    corpus_texts,
    iter_documents,
    pack_stream,
    read_token_shard,
    shard_sequences,
    write_token_shard,
)
from neuron_census.data.tokenization import TextTokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "resources"
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def gpt2() -> TextTokenizer:
    return load_tokenizer("gpt2", {"source": "gpt2_bpe"}, ROOT)


@pytest.fixture(scope="module")
def words() -> TextTokenizer:
    return load_tokenizer("w", {"source": "words", "words": ["a", "b", "c"]})


def _bundled(**extra: object) -> dict:
    return {"source": "bundled", **extra}


def _split_documents(text: str) -> list[str]:
    """Documents of a whole text under the bundled format."""
    return list(group_blocks(iter_blocks([text])))


# --------------------------------------------------------------------------- text format


def test_blocks_and_documents_round_trip() -> None:
    text = "\n  \nfirst\nblock  \n\n\n\t\n  second block\n \nthird\n\n"
    assert list(iter_blocks([text])) == ["first\nblock  ", "  second block", "third"]
    pieces = [text[i : i + 3] for i in range(0, len(text), 3)]
    assert list(iter_blocks(pieces)) == ["first\nblock  ", "  second block", "third"]
    assert list(group_blocks(["x" * 300, "y" * 300, "z" * 10], 500)) == [
        "x" * 300 + "\n\n" + "y" * 300,
        "z" * 10,
    ]
    rng = random.Random(0)
    blocks = [
        "\n".join(
            " " * rng.randint(0, 2) + "w" * rng.randint(1, 90) for _ in range(rng.randint(1, 4))
        )
        for _ in range(400)
    ]
    docs = list(group_blocks(blocks, 500))
    stored = "\n\n".join(docs) + "\n"  # a bundled file: its documents joined by one blank line
    assert _split_documents(stored) == docs
    chunks = [stored[i : i + 777] for i in range(0, len(stored), 777)]
    assert list(group_blocks(iter_blocks(chunks), 500)) == docs


# --------------------------------------------------------------------------- bundled corpus


def test_resources_small_and_decompress() -> None:
    total = sum(p.stat().st_size for p in RESOURCES.rglob("*") if p.is_file())
    assert total < 6_000_000
    sources = (RESOURCES / "SOURCES.md").read_text(encoding="utf-8")
    for domain in DOMAINS:
        text = lzma.decompress(corpus_file(domain, ROOT).read_bytes()).decode("utf-8")
        assert text.endswith("\n") and len(text) > 100_000
        kept = int(re.search(rf"\| {domain} \| (\d+) / \d+ \|", sources).group(1))
        assert len(_split_documents(text)) == kept, domain
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (RESOURCES / "models" / "stories260K" / name).is_file()
    assert (RESOURCES / "LICENSES.md").is_file()


def test_choose_documents_rule() -> None:
    docs = [f"doc {i} " + "x" * (100 + 37 * i) for i in range(40)]
    sizes = [len(d.encode()) for d in docs]
    assert choose_documents("t", docs, 10**9) == list(range(40))
    kept = choose_documents("t", docs, 20_000)
    assert kept == sorted(kept) and 0 < len(kept) < 40
    assert sum(sizes[i] for i in kept) + 2 * (len(kept) - 1) + 1 <= 20_000
    assert choose_documents("t", docs, 20_000) == kept
    assert choose_documents("u", docs, 20_000) != kept  # the domain name seeds the permutation


@pytest.mark.skipif(not (SHARED / "SOURCES.md").is_file(), reason="offline source data not present")
def test_builder_reproduces_resources(tmp_path: Path) -> None:
    build(SHARED, tmp_path / "resources")
    for path in sorted(p for p in RESOURCES.rglob("*") if p.is_file()):
        rebuilt = tmp_path / "resources" / path.relative_to(RESOURCES)
        assert rebuilt.read_bytes() == path.read_bytes(), path


def test_bundled_interleaving_covers_all_domains() -> None:
    firsts = {next(iter_documents(_bundled(domains=[d]), ROOT)): d for d in DOMAINS}
    docs = iter_documents(_bundled(), ROOT)
    head = [next(docs) for _ in range(16)]
    assert {firsts[doc] for doc in head[:8] if doc in firsts} == set(DOMAINS)
    assert set(head[:8]) == set(firsts)
    other_seed = iter_documents(_bundled(seed=1), ROOT)
    assert set(next(other_seed) for _ in range(8)) == set(firsts)


def test_split_train_heldout() -> None:
    spec = _bundled(domains=["biomed", "math"], heldout_every=5)
    every = list(iter_documents(spec, ROOT))
    train = list(iter_documents({**spec, "split": "train"}, ROOT))
    held = list(iter_documents({**spec, "split": "heldout"}, ROOT))
    assert set(train).isdisjoint(held)
    assert sorted(train + held) == sorted(every)
    biomed = list(iter_documents(_bundled(domains=["biomed"]), ROOT))
    biomed_held = list(iter_documents(_bundled(domains=["biomed"], split="heldout",
                                               heldout_every=5), ROOT))
    assert biomed_held == biomed[4::5]


def test_corpus_texts_train_only() -> None:
    spec = _bundled(domains=["biomed"])
    texts = list(corpus_texts(spec, ROOT, max_chars=5000))
    assert sum(len(t) for t in texts) == 5000
    held = set(iter_documents({**spec, "split": "heldout"}, ROOT))
    assert not any(t in held for t in texts[:-1])


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        ({"domains": ["poetry"]}, r"'datasets.d.domains.0': 'poetry' is not one of"),
        ({"domains": "wiki"}, r"'datasets.d.domains': 'wiki' is not of type 'array'"),
        ({"split": "test"}, r"'datasets.d.split': 'test' is not one of"),
        ({"heldout_every": 1}, r"'datasets.d.heldout_every': 1 is less than the minimum of 2"),
        ({"encoding_errors": "ignore"}, r"'datasets.d.encoding_errors': 'ignore' is not one of"),
        ({"seq_len": 1}, r"'datasets.d.seq_len': 1 is less than the minimum of 2"),
        ({"n_shards": 0}, r"'datasets.d.n_shards': 0 is less than the minimum of 1"),
        ({"max_document_chars": 0}, r"'datasets.d.max_document_chars': 0 is less than the minimum of 1000"),
        ({"source": "files"}, r"'datasets.d': 'paths' is a required property"),
        ({"source": "files", "paths": "t.txt"}, r"'datasets.d.paths': 't.txt' is not of type 'array'"),
        ({"source": "hf", "hf": {}}, r"'datasets.d.hf': 'path' is a required property"),
        ({"source": "nope"}, r"'datasets.d.source': 'nope' is not one of"),
    ],
)
def test_dataset_mistakes_are_refused_before_any_job(mistake: dict, message: str) -> None:
    """The corpus functions read a dataset's keys as the config check left them: types, ranges, choices and
    required keys are the schema's to refuse (as every workflow run checks its config before any job)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["datasets"]["d"] = {"source": "bundled", "seq_len": 8, "sequences_per_shard": 2, **mistake}
    with pytest.raises(ConfigError, match=message):
        validate_config(config, ROOT / "workflow" / "schemas" / "config.schema.yaml")


def test_a_repeated_domain_is_refused() -> None:
    """What the schema lets through, the corpus refuses: a domain listed twice would be read twice."""
    with pytest.raises(ValueError, match=r"'d': domains \['wiki', 'wiki'\] repeat a domain"):
        next(iter_documents(_bundled(domains=["wiki", "wiki"]), ROOT, dataset="d"))


# --------------------------------------------------------------------------- other languages


def _labelled(domains: list[str]) -> list[tuple[str, str]]:
    from neuron_census.data import corpus

    spec = {**corpus.DEFAULTS, **_bundled(domains=domains)}
    return [(text, origin.source) for text, origin in corpus._bundled_documents(spec, ROOT, "multi")]


def test_other_language_domains_are_bundled_within_budget() -> None:
    assert DOMAINS == ("wiki", "code", "docs", "math", "legal", "biomed", "speech", "lit")  # the default, unchanged
    assert ALL_DOMAINS == DOMAINS + LANGUAGE_DOMAINS + CODE_DOMAINS and len(set(ALL_DOMAINS)) == 25
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert tuple(schema["$defs"]["dataset"]["properties"]["domains"]["items"]["enum"]) == ALL_DOMAINS
    sources = (RESOURCES / "SOURCES.md").read_text(encoding="utf-8")
    labelled = _labelled(list(LANGUAGE_DOMAINS + CODE_DOMAINS))
    assert {label for _, label in labelled} == set(LANGUAGE_DOMAINS + CODE_DOMAINS)
    packed = 0
    for domain in LANGUAGE_DOMAINS + CODE_DOMAINS:
        path = corpus_file(domain, ROOT)
        assert path.name == (f"{domain}.jsonl.xz" if domain in CODE_DOMAINS else f"{domain}.txt.xz")
        packed += path.stat().st_size
        docs = [text for text, label in labelled if label == domain]
        raw = len(("\n\n".join(docs) + "\n").encode("utf-8"))  # the bytes counted against the budget
        assert 0.9 * MULTI_DOMAIN_BUDGET_BYTES < raw <= MULTI_DOMAIN_BUDGET_BYTES, domain
        row = re.search(rf"\| {domain} \| corpus/{re.escape(path.name)} \|.*\| (\d+) / \d+ \| ([\d,]+) \|", sources)
        assert (int(row.group(1)), int(row.group(2).replace(",", ""))) == (len(docs), raw), domain
        if domain in LANGUAGE_DOMAINS:  # the text format: a stored document is read back as it is
            text = lzma.decompress(path.read_bytes()).decode("utf-8")
            assert text == "\n\n".join(docs) + "\n"
    assert packed < 700_000  # 585,676 bytes of xz for the 17 domains
    assert _labelled(["wiki"])[0][1] == "wiki" and len(set(ALL_DOMAINS) - set(DOMAINS)) == 17
    with pytest.raises(ValueError, match=r"'d': unknown bundled domains \['code-rust'\]; use any of wiki, code"):
        next(iter_documents(_bundled(domains=["code-rust"]), ROOT, dataset="d"))


def test_a_dataset_may_name_other_language_domains() -> None:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["datasets"]["d"] = {"source": "bundled", "seq_len": 8, "sequences_per_shard": 2, "domains": ["lang-fr", "code-go"]}
    schema = with_figures(yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text()))
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(config))  # the schema's part of the check
    config["datasets"]["d"]["domains"] = ["lang-xx"]
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(config))
    docs = list(iter_documents(_bundled(domains=["lang-fr", "code-go"], split="heldout", heldout_every=3), ROOT))
    assert sum(d.startswith("package ") for d in docs) == 23 // 3  # Go source files, each whole
    assert len(docs) == 68 // 3 + 23 // 3


def test_natural_language_domains_read_as_their_language() -> None:
    def rate(text: str, words: set[str]) -> float:
        tokens = re.findall(r"\w+", text.lower())
        return sum(t in words for t in tokens) / len(tokens)

    french = {"le", "la", "les", "des", "est", "une", "vous", "pour", "dans", "et"}
    english = {"the", "and", "is", "of", "to", "you", "for", "in", "with", "this"}
    german = {"der", "die", "das", "und", "ist", "nicht", "sie", "mit", "den", "zu"}
    text = {d: "\n".join(t for t, _ in _labelled([d])) for d in ("lang-fr", "lang-en", "lang-de")}
    assert rate(text["lang-fr"], french) > 0.15 > rate(text["lang-fr"], english)
    assert rate(text["lang-en"], english) > 0.15 > rate(text["lang-en"], french)
    assert rate(text["lang-de"], german) > 0.15 > rate(text["lang-de"], french)
    for word in ("Paramètres", "fenêtre", "fichier", "utilisateur"):
        assert word in text["lang-fr"], word
    assert re.search(r"[α-ω]{4}", "\n".join(t for t, _ in _labelled(["lang-el"])))  # Greek script


def test_code_documents_survive_their_blank_lines() -> None:
    """A code domain's documents are whole source files: blank lines inside and files under MIN_DOCUMENT_CHARS
    are kept as they are (the text format would cut the one and merge the other)."""
    js = [text for text, _ in _labelled(["code-javascript"])]
    assert len(js) == 145 and min(map(len, js)) == 315 and sum("\n\n" in d for d in js) > 100
    records = [json.loads(line) for line in lzma.decompress(corpus_file("code-go", ROOT).read_bytes()).splitlines()]
    go = [text for text, _ in _labelled(["code-go"])]
    assert [r["text"] for r in records] == go and len(go) == 23
    assert all(d.startswith("package ") and "\n\n" in d for d in go)
    assert all(d.lstrip().startswith("<") for d, _ in _labelled(["code-html", "code-xml"]))


@pytest.mark.skipif(not (SHARED / "SOURCES.md").is_file(), reason="offline source data not present")
def test_code_documents_equal_source_files_of_the_index() -> None:
    sums = read_checksums(SHARED)
    assert "corpus_multi/code_index.tsv" in sums and "code_index.tsv" not in sums  # relative to corpus_multi/
    assert "corpus/code_python311_stdlib.txt" in sums and len(sums) == 18 + 26
    index = code_index((SHARED / "corpus_multi" / "code_index.tsv").read_text(encoding="utf-8"))
    labelled = _labelled(list(CODE_DOMAINS))
    for domain in CODE_DOMAINS:
        (rel,) = DOMAIN_SOURCES[domain]
        name = Path(rel).name
        files = source_files((SHARED / rel).read_text(encoding="utf-8"), index[name], name)
        assert len(files) == len(index[name])
        docs = [text for text, label in labelled if label == domain]
        assert docs and set(docs) <= set(files), domain
        positions = [files.index(d) for d in docs]
        assert positions == sorted(positions), domain  # kept in their original order
    (start, count), *_ = index["code_c_curl_examples.txt"]
    lines = (SHARED / "corpus_multi" / "code_c_curl_examples.txt").read_text(encoding="utf-8").split("\n")
    assert (start, count) == (1, 146)
    assert source_files("\n".join(lines[:147]) + "\n", [(1, 146)], "c")[0] == "\n".join(lines[:146])
    with pytest.raises(ValueError, match=r"span \(1, 140\) does not match"):
        source_files("\n".join(lines[:147]) + "\n", [(1, 140)], "c")


def test_checksum_blocks_may_hold_paths_relative_to_a_folder(tmp_path: Path) -> None:
    (tmp_path / "SOURCES.md").write_text(
        "# data\n## Checksums (sha256)\n```\n" + "a" * 64 + "  corpus/x.txt\n```\n"
        "## multi\ntext\n### Checksums (sha256), paths relative to corpus_multi/\n```\n"
        + "b" * 64 + "  y.txt\n" + "c" * 64 + "  tagged/README.md\n```\n## later\n```\n" + "d" * 64 + "  z.bin\n```\n",
        encoding="utf-8",
    )
    assert read_checksums(tmp_path) == {
        "corpus/x.txt": "a" * 64,
        "corpus_multi/y.txt": "b" * 64,
        "corpus_multi/tagged/README.md": "c" * 64,
        "z.bin": "d" * 64,
    }


# --------------------------------------------------------------------------- files and hf


def test_invalid_utf8_strict_and_replace(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello\n\nabc\xffdef\n")
    spec = {"source": "files", "paths": ["*.txt"]}
    with pytest.raises(ValueError, match=r"bad\.txt.*byte offset 10"):
        list(iter_documents(spec, tmp_path))
    docs = list(iter_documents({**spec, "encoding_errors": "replace"}, tmp_path))
    assert docs == ["hello\n\nabc\ufffddef"]


def test_invalid_utf8_offset_in_compressed_file(tmp_path: Path) -> None:
    data = ("é" * 700_000).encode() + b"\xe9x"  # offset beyond the first 1 MiB read
    (tmp_path / "big.txt.xz").write_bytes(lzma.compress(data))
    with pytest.raises(ValueError, match=r"big\.txt\.xz.*byte offset 1400000"):
        list(iter_documents({"source": "files", "paths": ["*.xz"]}, tmp_path))


def test_files_formats(tmp_path: Path) -> None:
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(b"one\r\n\r\ntwo\r\n"))
    lines = [{"text": "three"}, {"text": "  "}, {"text": "four"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    spec = {"source": "files", "paths": ["*.gz", "*.jsonl"], "min_document_chars": 1}
    assert list(iter_documents(spec, tmp_path)) == ["one", "two", "three", "four"]
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:1.*'text'"):
        list(iter_documents({"source": "files", "paths": ["c.jsonl"]}, tmp_path))


def test_empty_file_raises(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match=r"empty\.txt.*no documents"):
        list(iter_documents({"source": "files", "paths": ["empty.txt"]}, tmp_path))
    with pytest.raises(FileNotFoundError, match=r"'d'.*nothing\*\.txt"):
        spec = {"source": "files", "paths": ["nothing*.txt"]}
        list(iter_documents(spec, tmp_path, dataset="d"))


def test_hf_source_local_jsonl(tmp_path: Path) -> None:
    records = [{"text": f"document number {i}", "id": i} for i in range(12)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    spec = {"source": "hf", "hf": {"path": "json", "data_files": "data.jsonl", "split": "train"},
            "split": "heldout", "heldout_every": 4}
    assert list(iter_documents(spec, tmp_path)) == [f"document number {i}" for i in (3, 7, 11)]
    bad = {**spec, "hf": {**spec["hf"], "text_field": "body"}}
    with pytest.raises(ValueError, match=r"'h'.*'body'"):
        list(iter_documents(bad, tmp_path, dataset="h"))


def test_short_documents_are_dropped_before_the_split(tmp_path: Path) -> None:
    """`drop_under_chars` (the Pile's documents under 50 characters, Gurnee et al.): hf records and files."""
    texts = ["x" * n for n in (49, 50, 10, 80, 51, 3, 60, 50)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
    hf = {"source": "hf", "hf": {"path": "json", "data_files": "data.jsonl", "split": "train"}, "drop_under_chars": 50}
    kept = [t for t in texts if len(t) >= 50]
    assert list(iter_documents(hf, tmp_path)) == kept
    assert list(iter_documents({**hf, "split": "heldout", "heldout_every": 2}, tmp_path)) == kept[1::2]
    files = {"source": "files", "paths": ["data.jsonl"], "drop_under_chars": 50}
    assert list(iter_documents(files, tmp_path)) == kept
    with pytest.raises(ValueError, match=r"data\.jsonl.*no documents of at least 100 characters"):
        list(iter_documents({**files, "drop_under_chars": 100}, tmp_path))


def test_hf_records_filtered_by_a_nested_field(tmp_path: Path) -> None:
    """`hf.where` picks subsets of a mixed dataset (the Pile's `meta.pile_set_name`) before the split."""
    subsets = ["Wikipedia (en)", "Github", "DM Mathematics", "Pile-CC"]
    records = [{"text": f"doc {i}", "meta": {"pile_set_name": subsets[i % 4]}} for i in range(16)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    hf = {"path": "json", "data_files": "data.jsonl", "split": "train"}
    where = {"meta.pile_set_name": ["Wikipedia (en)", "DM Mathematics"]}
    spec = {"source": "hf", "hf": {**hf, "where": where}}
    assert list(iter_documents(spec, tmp_path)) == [f"doc {i}" for i in (0, 2, 4, 6, 8, 10, 12, 14)]
    held_out = {**spec, "split": "heldout", "heldout_every": 4}  # every 4th of the kept documents
    assert list(iter_documents(held_out, tmp_path)) == ["doc 6", "doc 14"]
    missing = {"source": "hf", "hf": {**hf, "where": {"meta.subset": ["x"]}}}
    with pytest.raises(ValueError, match=r"'w'.*no field 'meta.subset' \(hf.where\)"):
        list(iter_documents(missing, tmp_path, dataset="w"))


# --------------------------------------------------------------------------- packing and shards


def test_packing_hand_example() -> None:
    def packed(docs: list[list[int]], seq_len: int, bos_id: int | None, eos_id: int | None) -> list[np.ndarray]:
        return [sequence for sequence, _, _ in pack_stream(((ids, Origin(None)) for ids in docs), seq_len, bos_id, eos_id)]

    docs = [[1, 2, 3], [], [4, 5], [6, 7, 8, 9]]
    out = [s.tolist() for s in packed(docs, 4, bos_id=0, eos_id=99)]
    assert out == [[0, 1, 2, 3], [0, 99, 4, 5], [0, 99, 6, 7]]  # [8, 9] not cut
    plain = [s.tolist() for s in packed(docs, 4, bos_id=None, eos_id=None)]
    assert plain == [[1, 2, 3, 4], [5, 6, 7, 8]]
    seqs = packed([[5] * 10], 3, bos_id=7, eos_id=None)
    assert len(seqs) == 5 and all(s.dtype == np.int32 and s.tolist() == [7, 5, 5] for s in seqs)


def test_packing_labels_every_token_with_its_documents_source() -> None:
    """Source codes follow the tokens: BOS and unlabelled text -1, an EOS separator the document it opens,
    codes in the order labels are met, and a cursor's carried tokens keep theirs into the next shard."""
    docs = [([1, 2, 3], Origin("wiki")), ([4], Origin(None)), ([5, 6], Origin("code")), ([], Origin("math")), ([7, 8, 9], Origin("wiki"))]
    out = list(pack_stream(iter(docs), 4, bos_id=0, eos_id=99))
    assert [seq.tolist() for seq, _, _ in out] == [[0, 1, 2, 3], [0, 99, 4, 99], [0, 5, 6, 99], [0, 7, 8, 9]]
    assert [codes.tolist() for _, codes, _ in out] == [[-1, 0, 0, 0], [-1, -1, -1, 1], [-1, 1, 1, 0], [-1, 0, 0, 0]]
    assert all(codes.dtype == np.int16 for _, codes, _ in out)
    assert out[0][2]().source_names == ("wiki",)  # the labels met by then, though asked for after later ones
    cursor = out[1][2]()
    assert cursor.source_names == ("wiki", "code") and cursor.carry.tolist() == [5, 6]
    assert cursor.carry_sources.tolist() == [1, 1]
    resumed = list(pack_stream(iter([([10, 11, 12, 13], Origin("math"))]), 4, bos_id=0, eos_id=99, cursor=cursor))
    assert [seq.tolist() for seq, _, _ in resumed] == [[0, 5, 6, 99], [0, 10, 11, 12]]
    assert [codes.tolist() for _, codes, _ in resumed] == [[-1, 1, 1, 2], [-1, 2, 2, 2]]
    assert resumed[-1][2]().source_names == ("wiki", "code", "math")


def test_shards_label_tokens_with_their_domain_file_or_hf_field(tmp_path: Path, gpt2: TextTokenizer) -> None:
    """A bundled document's tokens carry its domain, a file's its name, an hf record's `label_field`."""
    from neuron_census.data import corpus

    spec = _bundled(seq_len=32, sequences_per_shard=96, n_shards=1, domains=["code", "math"])
    tokens, codes, end = corpus.text_shard(spec, gpt2, 0, ROOT, name="b")
    first_text, first = next(corpus._bundled_documents({**corpus.DEFAULTS, **spec}, ROOT, "b"))
    assert set(end.source_names) == {"code", "math"} and (codes[:, 0] == -1).all() and (codes[:, 1:] >= 0).all()
    n_first = min(len(gpt2.encode(first_text)), 31)
    assert {end.source_names[c] for c in codes[0, 1 : 1 + n_first]} == {first.source}
    assert codes.shape == tokens.shape and {end.source_names[c] for c in np.unique(codes[codes >= 0])} == {"code", "math"}

    for name in ("english.txt", "python.jsonl"):
        text = "\n\n".join("word " * 120 for _ in range(3))
        (tmp_path / name).write_text(text if name.endswith(".txt") else "\n".join(json.dumps({"text": "word " * 120}) for _ in range(3)))
    files = {"source": "files", "paths": ["english.txt", "python.jsonl"], "seq_len": 16, "sequences_per_shard": 48, "min_document_chars": 10}
    _, codes, end = corpus.text_shard(files, gpt2, 0, tmp_path, name="f")
    assert end.source_names == ("english", "python")
    labels = [end.source_names[c] for c in codes[:, 1:].reshape(-1)]
    assert labels == sorted(labels, key=["english", "python"].index) and labels[0] == "english" and labels[-1] == "python"

    records = [{"text": f"doc {i} " + "x " * 40, "meta": {"set": ["Wiki", "Code"][i % 2]}} for i in range(8)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    hf = {"source": "hf", "hf": {"path": "json", "data_files": "data.jsonl", "split": "train", "label_field": "meta.set"},
          "seq_len": 45, "sequences_per_shard": 4}
    tokens, codes, end = corpus.text_shard(hf, gpt2, 0, tmp_path, name="h")
    assert end.source_names == ("Wiki", "Code")
    for row, document in zip(codes, range(4)):  # each record is 43 tokens and the EOS that opens the next
        assert len(gpt2.encode(records[document]["text"])) == 43
        assert row.tolist() == [-1] + [document % 2] * 43 + [(document + 1) % 2]
    unlabelled = {**hf, "hf": {k: v for k, v in hf["hf"].items() if k != "label_field"}}
    assert (corpus.text_shard(unlabelled, gpt2, 0, tmp_path, name="h").sources == -1).all()
    with pytest.raises(ValueError, match=r"'h'.*no field 'meta.kind' \(hf.label_field\)"):
        corpus.text_shard({**hf, "hf": {**hf["hf"], "label_field": "meta.kind"}}, gpt2, 0, tmp_path, name="h")
    # a one-language dataset (Europarl's en-fr pairs): a dotted text field and one label for every record
    pairs = [{"translation": {"en": "x " * 40, "fr": f"phrase {i} " + "y " * 40}} for i in range(8)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in pairs))
    fr = {**hf, "hf": {"path": "json", "data_files": "pairs.jsonl", "split": "train", "text_field": "translation.fr", "label": "fr"}}
    tokens, codes, end = corpus.text_shard(fr, gpt2, 0, tmp_path, name="fr")
    assert end.source_names == ("fr",) and set(codes[:, 1:].reshape(-1).tolist()) == {0}
    assert gpt2.encode(pairs[0]["translation"]["fr"]) == tokens[0, 1 : 1 + len(gpt2.encode(pairs[0]["translation"]["fr"]))].tolist()
    with pytest.raises(ValueError, match=r"'fr'.*no field 'translation.de' \(hf.text_field\)"):
        corpus.text_shard({**fr, "hf": {**fr["hf"], "text_field": "translation.de"}}, gpt2, 0, tmp_path, name="fr")


def test_shards_are_stable_when_appending(gpt2: TextTokenizer) -> None:
    spec = _bundled(seq_len=32, sequences_per_shard=8, n_shards=1)
    first = shard_sequences(spec, gpt2, 0, ROOT)
    grown = {**spec, "n_shards": 2}
    assert np.array_equal(shard_sequences(grown, gpt2, 0, ROOT), first)
    second = shard_sequences(grown, gpt2, 1, ROOT)
    both = shard_sequences({**spec, "sequences_per_shard": 16}, gpt2, 0, ROOT)
    assert np.array_equal(both, np.concatenate([first, second]))
    assert first.shape == (8, 32) and first.dtype == np.int32
    assert (first[:, 0] == 50256).all()
    expected = gpt2.encode(next(iter_documents(spec, ROOT)))[:31]
    assert first[0, 1:].tolist() == expected
    with pytest.raises(ValueError, match=r"'b'.*shard 2.*n_shards=2"):
        shard_sequences(grown, gpt2, 2, ROOT, dataset="b")


@pytest.mark.parametrize("seq_len", [16, 512])  # documents span several sequences / sequences span documents
def test_shards_chained_by_their_stream_cursors_equal_shards_read_from_the_start(
    gpt2: TextTokenizer, seq_len: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each shard read on from where the previous one ended is the shard read from the stream's start; and
    only its own documents are tokenized."""
    from neuron_census.data import corpus

    spec = _bundled(seq_len=seq_len, sequences_per_shard=6, n_shards=4)
    tokenized: list[int] = []  # documents handed to the tokenizer
    batches = corpus._token_batches

    def counted(documents, tokenizer):
        return batches((tokenized.append(1) or doc for doc in documents), tokenizer)

    monkeypatch.setattr(corpus, "_token_batches", counted)
    monkeypatch.setattr(corpus, "TOKENIZE_BATCH_DOCS", 1)  # documents are tokenized as the packer asks
    cursor = corpus.StreamCursor()
    for shard in range(4):
        expected = corpus.text_shard(spec, gpt2, shard, ROOT, name="b")
        tokenized.clear()
        got, sources, after = corpus.text_shard(spec, gpt2, shard, ROOT, name="b", cursor=cursor)
        np.testing.assert_array_equal(got, expected.tokens)
        np.testing.assert_array_equal(sources, expected.sources)  # the carried rest keeps its domains
        assert after.sequences == 6 * (shard + 1) and after.documents >= cursor.documents
        assert sum(tokenized) <= after.documents - cursor.documents + 1
        cursor = after
    assert cursor.documents >= 2  # so later shards skipped documents that a read from the start tokenizes
    with pytest.raises(ValueError, match=r"'b': a stream cursor after sequence 24 cannot start shard 1"):
        corpus.text_shard(spec, gpt2, 1, ROOT, name="b", cursor=cursor)


def _chained_shards(spec: dict, tokenizer: TextTokenizer, root: Path, name: str) -> tuple[list[np.ndarray], list]:
    """Every shard of `spec` read from the start, and made again from the previous shard's cursor (checked
    equal, each cursor with a source position); the cursors where each shard starts, and after the last."""
    from neuron_census.data import corpus

    from_start = [corpus.text_shard(spec, tokenizer, shard, root, name=name) for shard in range(spec["n_shards"])]
    expected = [shard.tokens for shard in from_start]
    cursors = [corpus.StreamCursor()]
    for shard in range(spec["n_shards"]):
        got, sources, after = corpus.text_shard(spec, tokenizer, shard, root, name=name, cursor=cursors[-1])
        np.testing.assert_array_equal(got, expected[shard])
        np.testing.assert_array_equal(sources, from_start[shard].sources)
        assert after.source_names == from_start[shard].end.source_names
        assert after.source is not None and after.documents > cursors[-1].documents
        cursors.append(after)
    return expected, cursors


def test_hf_shards_chained_by_their_stream_cursors_do_not_read_earlier_data_files(
    tmp_path: Path, gpt2: TextTokenizer
) -> None:
    """An hf stream's shard goes on from the dataset's own state after the previous shard: it equals the
    shard read from the start (with a `where` filter, a held-out split and empty records in the stream),
    and the data files before the cursor are not read again (they are made unreadable here)."""
    from neuron_census.data import corpus

    files = []
    for f in range(6):
        records = [{"text": "" if i == 3 else f"file {f} record {i}: " + "some words " * (i % 5),
                    "meta": {"set": "kept" if i % 4 else "other"}} for i in range(20)]
        files.append(tmp_path / f"part{f}.jsonl")
        files[-1].write_text("\n".join(json.dumps(r) for r in records) + "\n")
    hf = {"path": "json", "data_files": [p.name for p in files], "split": "train", "where": {"meta.set": ["kept"]}}
    spec = {"source": "hf", "hf": hf, "split": "train", "heldout_every": 5, "seq_len": 8,
            "sequences_per_shard": 25, "n_shards": 4}
    expected, cursors = _chained_shards(spec, gpt2, tmp_path, "h")
    # the stream goes on from the file of `previous_state`; the json builder reads the first file's first
    # block for its schema, so the files in between are the ones never read
    resumed_from = json.loads(cursors[3].source)["state"]["examples_iterable"]["previous_state"]["shard_idx"]
    assert resumed_from >= 3
    for path in files[1:resumed_from]:
        path.write_text("not json {\n")
    with pytest.raises(Exception):
        list(iter_documents(spec, tmp_path))
    got, _, _ = corpus.text_shard(spec, gpt2, 3, tmp_path, name="h", cursor=cursors[3])
    np.testing.assert_array_equal(got, expected[3])
    counted = dataclasses.replace(cursors[3], source=None)  # without a position: earlier files are read
    with pytest.raises(Exception):
        corpus.text_shard(spec, gpt2, 3, tmp_path, name="h", cursor=counted)
    saved_by_other_version = json.loads(cursors[3].source) | {"datasets": "0.0"}
    elsewhere = dataclasses.replace(cursors[3], source=json.dumps(saved_by_other_version))
    with pytest.raises(Exception):  # a position saved by another datasets release is not trusted
        corpus.text_shard(spec, gpt2, 3, tmp_path, name="h", cursor=elsewhere)


def test_file_shards_chained_by_their_stream_cursors_do_not_read_earlier_files(
    tmp_path: Path, gpt2: TextTokenizer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `files` dataset's shard goes on from the file and document where the previous one ended: it
    equals the shard read from the start (text and compressed JSONL files, a held-out split counted per
    file), and the files before that one are not read again (they are made unreadable here)."""
    from neuron_census.data import corpus

    files = []
    for f in range(5):
        records = [{"text": "" if i == 4 else f"file {f} document {i}: " + "more words " * (i % 6)} for i in range(24)]
        lines = ("\n".join(json.dumps(r) for r in records) + "\n").encode()
        files.append(tmp_path / f"part{f}.jsonl.xz" if f % 2 else tmp_path / f"part{f}.jsonl")
        files[-1].write_bytes(lzma.compress(lines) if f % 2 else lines)
    spec = {"source": "files", "paths": ["part*.jsonl*"], "split": "heldout", "heldout_every": 2, "seq_len": 8,
            "sequences_per_shard": 20, "n_shards": 4}
    expected, cursors = _chained_shards(spec, gpt2, tmp_path, "f")
    resumed_from = json.loads(cursors[3].source)["file"]
    assert resumed_from >= 2 and json.loads(cursors[3].source)["records"] > 0  # within a file
    for path in files[:resumed_from]:
        path.write_text("not json {\n")
    got, _, _ = corpus.text_shard(spec, gpt2, 3, tmp_path, name="f", cursor=cursors[3])
    np.testing.assert_array_equal(got, expected[3])
    with pytest.raises(ValueError, match="part0.jsonl:1"):  # without a position: earlier files are read
        corpus.text_shard(spec, gpt2, 3, tmp_path, name="f", cursor=dataclasses.replace(cursors[3], source=None))
    (tmp_path / "part.jsonl").write_text('{"text": "a new first file"}\n')  # the globs now find other files
    with pytest.raises(ValueError, match="part.jsonl|part0.jsonl"):
        corpus.text_shard(spec, gpt2, 3, tmp_path, name="f", cursor=cursors[3])
    assert "is no longer" in capsys.readouterr().err


@pytest.mark.parametrize("tail", ["", "a b\n\n"], ids=["one-document", "long-last-document"])
def test_a_long_documents_carried_tokens_fill_the_next_shards(tmp_path: Path, words: TextTokenizer, tail: str) -> None:
    """A shard whose cursor carries more tokens than a sequence holds, with no document after it (one long
    document, or the file's last one), cuts the carried tokens into the next shard's sequences."""
    from neuron_census.data import corpus

    (tmp_path / "t.txt").write_text(tail + " ".join("abc"[i % 3] for i in range(100)) + "\n")
    spec = {"source": "files", "paths": ["t.txt"], "seq_len": 8, "sequences_per_shard": 3, "n_shards": 4,
            "min_document_chars": 1}
    cursor = corpus.StreamCursor()
    for shard in range(4):
        got, sources, after = corpus.text_shard(spec, words, shard, tmp_path, name="long", cursor=cursor)
        np.testing.assert_array_equal(got, shard_sequences(spec, words, shard, tmp_path, dataset="long"))
        assert len(after.carry) >= 100 - 7 * 3 * (shard + 1)  # every shard ends inside the long document
        cursor = after


@pytest.mark.parametrize("tokenizer_name", ["gpt2", "stories260k"])
def test_long_documents_are_tokenized_in_pieces_as_one_pass(tokenizer_name: str) -> None:
    """Cut before a word (sentencepiece marks a text's start; GPT-2's pre-tokens start at a space), each piece
    encoded behind the end of the one before: the joined ids equal one pass over the whole document."""
    from neuron_census.data.corpus import encode_in_pieces, text_pieces

    spec = {"gpt2": {"source": "gpt2_bpe"}, "stories260k": {"source": "local", "path": str(RESOURCES / "models/stories260K")}}
    tokenizer = load_tokenizer(tokenizer_name, spec[tokenizer_name], ROOT)
    documents = [d for d in iter_documents(_bundled(domains=["wiki", "lit", "legal"]), ROOT) if " " in d][:20]
    for document in documents:
        pieces = text_pieces(document, 300)
        assert "".join(pieces) == document and max(len(p) for p in pieces) <= 300
        assert all(len(p) >= 150 for p in pieces[:-1])  # cut in each piece's second half
        assert encode_in_pieces(document, tokenizer, 300).tolist() == tokenizer.encode(document)


def test_a_one_line_text_is_read_in_bounded_pieces(tmp_path: Path, gpt2: TextTokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that is one huge line: read in linear time and tokenized a piece at a time, with the same
    shards as one pass; beyond `max_document_chars` it is refused while it is read, naming the file."""
    from neuron_census.data import corpus

    line = " ".join(f"word{i % 97}" for i in range(5000))
    (tmp_path / "line.txt").write_text(line + "\n")
    spec = {"source": "files", "paths": ["line.txt"], "seq_len": 32, "sequences_per_shard": 20, "n_shards": 1}
    whole = shard_sequences(spec, gpt2, 0, tmp_path)
    monkeypatch.setattr(corpus, "TOKENIZE_PIECE_CHARS", 1000)
    encoded: list[int] = []
    encode = gpt2.backend.encode
    monkeypatch.setattr(type(gpt2.backend), "encode", lambda self, text, **kw: encoded.append(len(text)) or encode(text, **kw), raising=False)
    np.testing.assert_array_equal(shard_sequences(spec, gpt2, 0, tmp_path), whole)
    assert encoded and max(encoded) <= 1000 + corpus.PIECE_CONTEXT_CHARS
    with pytest.raises(ValueError, match=r"line\.txt: a paragraph without a blank line exceeds 20,000 characters \(after document 0\); raise the dataset's max_document_chars"):
        shard_sequences({**spec, "max_document_chars": 20_000}, gpt2, 0, tmp_path)
    (tmp_path / "line.jsonl").write_text(json.dumps({"text": "short"}) + "\n" + json.dumps({"text": line}) + "\n")
    with pytest.raises(ValueError, match=r"line\.jsonl:2: a line exceeds 20,000 characters"):
        shard_sequences({**spec, "paths": ["line.jsonl"], "max_document_chars": 20_000}, gpt2, 0, tmp_path)


def test_a_shard_store_keeps_its_stream_cursor(tmp_path: Path, words: TextTokenizer) -> None:
    from neuron_census.data.corpus import StreamCursor, read_stream_end, read_token_sources

    tokens = np.array([[0, 2, 3, 4]], dtype=np.int32)
    for carry, source in (((3, 2, 4), None), ((), '{"records": 9, "state": {"shard_idx": 2}}')):
        cursor = StreamCursor(sequences=5, documents=7, started=True, carry=carry, source=source,
                              carry_sources=[1, 0, -1][: len(carry)], source_names=("wiki", "code"))
        path = tmp_path / f"s{len(carry)}.zarr"
        write_token_shard(path, tokens, tokenizer=words, dataset="d", shard=0, stream_end=(cursor, "abc"),
                          sources=(np.array([[-1, 0, 1, 1]]), ("wiki", "code")))
        back = read_stream_end(path, "abc")
        assert (back.sequences, back.documents, back.started, back.source) == (5, 7, True, source)
        np.testing.assert_array_equal(back.carry, carry)
        assert back.carry_sources.tolist() == [1, 0, -1][: len(carry)] and back.source_names == ("wiki", "code")
        codes, names = read_token_sources(path)
        assert codes.tolist() == [[-1, 0, 1, 1]] and codes.dtype == np.int16 and names == ("wiki", "code")
        assert read_stream_end(path, "other settings") is None
        np.testing.assert_array_equal(read_token_shard(path)[0], tokens)
    write_token_shard(tmp_path / "plain.zarr", tokens, tokenizer=words, dataset="d", shard=0)
    assert read_token_sources(tmp_path / "plain.zarr") is None
    with pytest.raises(ValueError, match=r"bad\.zarr: source codes must be the tokens' shape and index its 1 source names"):
        write_token_shard(tmp_path / "bad.zarr", tokens, tokenizer=words, dataset="d", shard=0, sources=(np.array([[0, 0, 1, 0]]), ("wiki",)))
    assert not (tmp_path / "bad.zarr").exists()


def test_too_few_tokens_names_dataset(tmp_path: Path, words: TextTokenizer) -> None:
    (tmp_path / "t.txt").write_text("a b c " * 20)
    spec = {"source": "files", "paths": ["t.txt"], "seq_len": 8, "sequences_per_shard": 4,
            "n_shards": 3}
    shard0 = shard_sequences(spec, words, 0, tmp_path, dataset="tiny")
    assert shard0[0].tolist() == [0, 2, 3, 4, 2, 3, 4, 2]
    with pytest.raises(ValueError, match=r"dataset 'tiny' yields only 8 sequences of length 8; "
                                         r"shard 2 needs sequences 8\.\.11"):
        shard_sequences(spec, words, 2, tmp_path, dataset="tiny")


def test_random_tokens(gpt2: TextTokenizer) -> None:
    spec = {"source": "random_tokens", "seq_len": 16, "sequences_per_shard": 50, "n_shards": 2,
            "seed": 3}
    a = shard_sequences(spec, gpt2, 0)
    assert a.shape == (50, 16) and (a[:, 0] == 50256).all()
    assert a[:, 1:].min() >= 0 and a[:, 1:].max() < 50256
    assert np.array_equal(a, shard_sequences(spec, gpt2, 0))
    assert not np.array_equal(a, shard_sequences(spec, gpt2, 1))
    tiny = load_tokenizer("w", {"source": "words", "words": ["a", "b"]})
    ids = shard_sequences({**spec, "seq_len": 200}, tiny, 0)
    assert set(np.unique(ids[:, 1:]).tolist()) == {2, 3} and (ids[:, 0] == 0).all()


# --------------------------------------------------------------------------- shard store


def test_write_read_round_trip(tmp_path: Path, gpt2: TextTokenizer) -> None:
    tokens = np.arange(5 * 7, dtype=np.int64).reshape(5, 7)
    tokens[:, 0] = 50256
    path = tmp_path / "s.zarr"
    write_token_shard(path, tokens, tokenizer=gpt2, dataset="d", shard=3)
    back, attrs = read_token_shard(path)
    assert back.dtype == np.int32 and np.array_equal(back, tokens)
    assert attrs["kind"] == "token_shard" and attrs["format_version"] == 1
    shape = (attrs["dataset"], attrs["shard"], attrs["seq_len"], attrs["n_sequences"])
    assert shape == ("d", 3, 7, 5)
    assert attrs["tokenizer"] == "gpt2" and attrs["tokenizer_fingerprint"] == gpt2.fingerprint
    assert (attrs["bos_id"], attrs["has_bos"], attrs["vocab_size"]) == (50256, True, 50257)
    assert not any(p.name.startswith(".s.zarr.tmp") for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match=r"ids outside"):
        write_token_shard(tmp_path / "x.zarr", tokens + 1, tokenizer=gpt2, dataset="d", shard=0)


def test_damaged_stores_raise(tmp_path: Path, gpt2: TextTokenizer) -> None:
    tokens = np.ones((6, 4), dtype=np.int32)
    good = tmp_path / "good.zarr"
    write_token_shard(good, tokens, tokenizer=gpt2, dataset="d", shard=0)

    no_chunks = tmp_path / "no_chunks.zarr"
    shutil.copytree(good, no_chunks)
    shutil.rmtree(no_chunks / "tokens" / "c")
    with pytest.raises(ValueError, match=r"no_chunks\.zarr.*truncated"):
        read_token_shard(no_chunks)

    no_meta = tmp_path / "no_meta.zarr"
    shutil.copytree(good, no_meta)
    (no_meta / "tokens" / "zarr.json").unlink()
    with pytest.raises(ValueError, match=r"no_meta\.zarr"):
        read_token_shard(no_meta)

    corrupt = tmp_path / "corrupt.zarr"
    shutil.copytree(good, corrupt)
    chunk = next(p for p in (corrupt / "tokens" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:5])
    with pytest.raises(ValueError, match=r"corrupt\.zarr"):
        read_token_shard(corrupt)

    with pytest.raises(ValueError, match=r"missing\.zarr"):
        read_token_shard(tmp_path / "missing.zarr")


def test_resources_fall_back_to_the_source_checkout(tmp_path):
    """From a working directory without `resources/`, the checkout's bundled corpus is found."""
    assert resources_dir(tmp_path) == Path(__file__).resolve().parents[1] / "resources"
    assert corpus_file("wiki", tmp_path).is_file()
