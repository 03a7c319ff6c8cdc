"""Tokenizers load offline and give the reference ids; fingerprints identify definitions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neuron_census.config import ConfigError, validate_config
from neuron_census.data.tokenization import TextTokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
STORIES = {"source": "local", "path": "resources/models/stories260K"}
WORDS = {"source": "words", "words": ["the", "cat", "sat", "on", "mat", "."]}


@pytest.fixture(scope="module")
def gpt2() -> TextTokenizer:
    return load_tokenizer("gpt2", {"source": "gpt2_bpe"}, ROOT)


@pytest.fixture(scope="module")
def stories() -> TextTokenizer:
    return load_tokenizer("stories", STORIES, ROOT)


def test_gpt2_bpe_reference_ids(gpt2: TextTokenizer) -> None:
    ids = gpt2.encode("Hello world, the quick brown fox.")
    assert ids == [15496, 995, 11, 262, 2068, 7586, 21831, 13]
    assert (gpt2.bos_id, gpt2.eos_id, gpt2.vocab_size) == (50256, 50256, 50257)
    strings = gpt2.token_strings()
    assert len(strings) == 50257
    assert strings[262] == "Ġthe" and strings[50256] == "<|endoftext|>"
    assert gpt2.special_ids == frozenset({50256})


def test_gpt2_bpe_batch_matches_single(gpt2: TextTokenizer) -> None:
    texts = ["Hello world, the quick brown fox.", "", "  two  spaces\n\nand lines"]
    assert gpt2.encode_batch(texts) == [gpt2.encode(t) for t in texts]
    assert gpt2.encode_batch([]) == []
    assert gpt2.backend.decode(gpt2.encode(texts[2])) == texts[2]


def test_stories260k_local(stories: TextTokenizer) -> None:
    assert stories.bos_id == 1 and stories.eos_id == 2 and stories.vocab_size == 512
    text = "Once upon a time, there was a little girl named Lily."
    ids = stories.encode(text)
    assert ids[:4] == [403, 407, 261, 378]  # "▁Once ▁upon ▁a ▁time"
    assert 1 not in ids  # no bos added by encode
    assert stories.backend.decode(ids) == text
    assert stories.token_strings()[403] == "▁Once"
    assert len(stories.token_strings()) == 512


def test_words_tokenizer_ids() -> None:
    tok = load_tokenizer("w", WORDS)
    assert tok.encode("the cat sat on the mat.") == [2, 3, 4, 5, 2, 6, 7]
    assert tok.encode("the dog") == [2, 1]  # unknown word -> <unk>
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (0, None, 8)
    assert tok.token_strings()[:3] == ["<bos>", "<unk>", "the"]


def test_words_tokenizer_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="'w'.*'cat'"):
        load_tokenizer("w", {"source": "words", "words": ["cat", "cat"]})


def test_bos_option(gpt2: TextTokenizer) -> None:
    none = load_tokenizer("g", {"source": "gpt2_bpe", "bos": "none"}, ROOT)
    assert none.bos_id is None and none.eos_id == 50256
    explicit = load_tokenizer("s", {**STORIES, "bos": "</s>"}, ROOT)
    assert explicit.bos_id == 2
    with pytest.raises(ValueError, match="'g'.*<nope>"):
        load_tokenizer("g", {"source": "gpt2_bpe", "bos": "<nope>"}, ROOT)


def test_fingerprints(gpt2: TextTokenizer, stories: TextTokenizer) -> None:
    again = load_tokenizer("other-name", {"source": "gpt2_bpe"}, ROOT)
    assert again.fingerprint == gpt2.fingerprint
    assert len(gpt2.fingerprint) == 64
    no_bos = load_tokenizer("g", {"source": "gpt2_bpe", "bos": "none"}, ROOT)
    words = load_tokenizer("w", WORDS)
    words2 = load_tokenizer("w", {"source": "words", "words": ["the", "cat"]})
    prints = {gpt2.fingerprint, no_bos.fingerprint, stories.fingerprint, words.fingerprint,
              words2.fingerprint}
    assert len(prints) == 5
    assert load_tokenizer("s2", STORIES, ROOT).fingerprint == stories.fingerprint


def test_missing_local_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"'mine'.*no_such_dir"):
        load_tokenizer("mine", {"source": "local", "path": "no_such_dir"}, tmp_path)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"source": "spm"}, r"'tokenizers.x.source': 'spm' is not one of"),
        ({"source": "hub"}, r"'tokenizers.x': 'id' is a required property"),
        ({"source": "local"}, r"'tokenizers.x': 'path' is a required property"),
        ({"source": "words", "words": "cat"}, r"'tokenizers.x.words': 'cat' is not of type 'array'"),
        ({"source": "words", "words": ["cat", ""]}, r"'tokenizers.x.words.1': '' should be non-empty"),
        ({"source": "gpt2_bpe", "bos": 3}, r"'tokenizers.x.bos': 3 is not of type 'string'"),
        ({"source": "gpt2_bpe", "path": "elsewhere"}, r"'tokenizers.x'.*'path' was unexpected"),
    ],
)
def test_tokenizer_mistakes_are_refused_before_any_job(spec: dict, message: str) -> None:
    """`load_tokenizer` reads a spec as the config check left it: unknown sources and missing or mistyped keys
    are the schema's to refuse (as every workflow run checks its config before any job)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["tokenizers"]["x"] = spec
    with pytest.raises(ConfigError, match=message):
        validate_config(config, ROOT / "workflow" / "schemas" / "config.schema.yaml")


def test_missing_gpt2_files(tmp_path: Path) -> None:
    (tmp_path / "resources").mkdir()  # a working directory with resources/ but no GPT-2 BPE files in it
    with pytest.raises(FileNotFoundError, match=r"'g'.*encoder.json"):
        load_tokenizer("g", {"source": "gpt2_bpe"}, tmp_path)


def test_a_trained_bpe_folder_loads_as_autotokenizer_loads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct read of the pipeline's own BPE folder gives the tokenizer AutoTokenizer gives: same
    backend definition, fingerprint, BOS/EOS and special ids, so no shard or table changes with it."""
    from neuron_census.data import bpe, tokenization

    texts = ["The big cat sees the dog.", "A small dog runs home.\n", "def f(x):\n    return x"] * 50
    bpe.train_bpe_tokenizer(texts, 300, tmp_path / "bpe")
    spec = {"source": "local", "path": str(tmp_path / "bpe")}
    direct = load_tokenizer("bpe", spec)
    monkeypatch.setattr(tokenization, "read_trained_bpe", lambda folder: None)
    auto = load_tokenizer("bpe", spec)
    assert direct == auto  # name, bos_id, eos_id, vocab_size, fingerprint
    assert (direct.bos_id, direct.eos_id, direct.special_ids) == (2, 2, auto.special_ids) == (2, 2, frozenset({0, 1, 2, 3}))
    assert direct.backend.to_str() == auto.backend.to_str()
    assert direct.encode_batch(texts[:3]) == auto.encode_batch(texts[:3])


def test_only_folders_the_bpe_training_wrote_are_read_directly(tmp_path: Path) -> None:
    from neuron_census.data import bpe

    bpe.train_bpe_tokenizer(["the cat sat on the mat"] * 20, 300, tmp_path / "bpe")
    assert bpe.read_trained_bpe(tmp_path / "bpe") is not None
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # an edited BOS
        edited = tmp_path / "bpe" / name
        edited.write_text(edited.read_text().replace('"bos_token": "</s>"', '"bos_token": "<s>"'))
    assert bpe.read_trained_bpe(tmp_path / "bpe") is None
    assert bpe.read_trained_bpe(tmp_path / "missing") is None
    assert load_tokenizer("bpe", {"source": "local", "path": str(tmp_path / "bpe")}).bos_id == 0  # AutoTokenizer read it
