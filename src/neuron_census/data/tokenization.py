"""Tokenizers behind one small interface, loadable offline.

Every tokenizer is reduced to a `tokenizers.Tokenizer` (the fast Rust backend), so batch
encoding is fast and the fingerprint can be computed from its canonical JSON definition: two
configs naming the same tokenizer share token shards and statistics, different ones never do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from neuron_census.config import definition_default
from neuron_census.data.bpe import read_trained_bpe
from neuron_census.data.bundle import resources_dir
from neuron_census.errors import first_line

GPT2_EOT = "<|endoftext|>"
WORDS_BOS = "<bos>"
WORDS_UNK = "<unk>"


@dataclass(frozen=True)
class TextTokenizer:
    """A loaded tokenizer: ids for text, plus what packing and bookkeeping need."""

    name: str
    bos_id: int | None
    eos_id: int | None
    vocab_size: int
    fingerprint: str
    backend: Tokenizer = field(repr=False, compare=False)
    special_ids: frozenset[int] = field(default=frozenset(), compare=False)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no special tokens added."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several texts at once (parallel in the Rust backend)."""
        return [enc.ids for enc in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def token_strings(self) -> list[str]:
        """Raw token string per id (e.g. "Ġthe"); ids with no token map to ""."""
        return [self.backend.id_to_token(i) or "" for i in range(self.vocab_size)]

    def token_texts(self) -> list[str]:
        """The text of each id as it reads inside a text: decoded alone, with the leading space that a
        sentencepiece piece's "▁" stands for (decoding one piece drops it) put back."""
        texts = self.backend.decode_batch([[i] for i in range(self.vocab_size)], skip_special_tokens=False)
        raw = self.token_strings()
        return [" " + text if piece.startswith("▁") and not text.startswith(" ") else text for text, piece in zip(texts, raw)]

    def newline_ids(self) -> list[int]:
        """Ids of tokens that decode to whitespace holding a line break ("\\n", "\\n\\n", " \\n")."""
        return [i for i, text in enumerate(self.token_texts()) if "\n" in text and not text.strip()]


def load_tokenizer(name: str, spec: Mapping[str, Any], root: Path = Path(".")) -> TextTokenizer:
    """Build the tokenizer described by a config entry `tokenizers.<name>` (the config check has refused
    unknown sources and missing or mistyped keys; a `train_bpe` tokenizer comes here as its `local` folder)."""
    if spec["source"] in ("hub", "local"):
        backend, bos, eos, special = _from_transformers(name, spec, root)
    elif spec["source"] == "gpt2_bpe":
        backend = _gpt2_bpe(name, root)
        eot = backend.token_to_id(GPT2_EOT)
        bos, eos, special = eot, eot, frozenset({eot})
    else:  # words
        backend = _words(name, spec["words"])
        bos, eos, special = 0, None, frozenset({0, 1})
    bos = _choose_special(name, "bos", spec.get("bos", definition_default("bos")), bos, backend)
    eos = _choose_special(name, "eos", spec.get("eos", definition_default("eos")), eos, backend)
    vocab = backend.get_vocab(with_added_tokens=True)
    # the backend's added tokens marked special count too (e.g. <s> even when no role names it)
    added = {i for i, token in backend.get_added_tokens_decoder().items() if token.special}
    # the fingerprint: sha256 of the canonical JSON of the tokenizer definition plus its bos/eos choice
    definition = {"tokenizer": json.loads(backend.to_str()), "bos_id": bos, "eos_id": eos}
    canonical = json.dumps(definition, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    fingerprint = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return TextTokenizer(name=name, bos_id=bos, eos_id=eos, vocab_size=max(vocab.values()) + 1 if vocab else 0,
                         fingerprint=fingerprint, backend=backend, special_ids=special | added)


def _choose_special(name: str, role: str, choice: str, default: int | None, backend: Tokenizer) -> int | None:
    """Resolve a `bos`/`eos` option: auto (tokenizer's own), none, or a token string."""
    if choice == "none":
        return None
    if choice == "auto":
        return default
    token_id = backend.token_to_id(choice)
    if token_id is None:
        raise ValueError(f"tokenizer {name!r}: {role} token {choice!r} is not in the vocabulary")
    return token_id


# The files a Hugging Face tokenizer folder is read from (a folder with none of them holds no tokenizer).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def _from_transformers(
    name: str, spec: Mapping[str, Any], root: Path
) -> tuple[Tokenizer, int | None, int | None, frozenset[int]]:
    """Load a `hub` id or a `local` folder with AutoTokenizer (never running remote code), keep its backend;
    a folder the pipeline's BPE training wrote is read directly, to the same result."""
    args: dict[str, Any] = {}
    if spec["source"] == "hub":
        where = spec["id"]
        if spec.get("revision"):
            args["revision"] = spec["revision"]
    else:
        path = Path(root) / spec["path"]  # an absolute path as it is
        if not path.is_dir():
            raise FileNotFoundError(f"tokenizer {name!r}: local folder {path} does not exist")
        if not any((path / file).is_file() for file in TOKENIZER_FILES):
            files = ", ".join(TOKENIZER_FILES)
            raise FileNotFoundError(f"tokenizer {name!r}: local folder {path} holds none of {files}")
        if (trained := read_trained_bpe(path)) is not None:
            backend, ids = trained
            return backend, ids["bos_token"], ids["eos_token"], frozenset(ids.values())
        where, args["local_files_only"] = str(path), True
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(where, **args, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"tokenizer {name!r}: cannot load from {where}: {first_line(err)}") from err
    backend = getattr(hf, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise ValueError(f"tokenizer {name!r}: {where} has no fast (tokenizers) backend")
    special = frozenset(int(i) for i in getattr(hf, "all_special_ids", []) if i is not None)
    return backend, hf.bos_token_id, hf.eos_token_id, special


def _gpt2_bpe(name: str, root: Path) -> Tokenizer:
    """GPT-2 byte-level BPE from the bundled encoder.json + vocab.bpe."""
    folder = resources_dir(root) / "tokenizers/gpt2_bpe"
    vocab, merges = folder / "encoder.json", folder / "vocab.bpe"
    for path in (vocab, merges):
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer {name!r}: missing GPT-2 BPE file {path}")
    backend = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(GPT2_EOT, special=True)])  # a vocabulary without it gets it appended
    return backend


def _words(name: str, words: list[str]) -> Tokenizer:
    """Whitespace word-level tokenizer: <bos>=0, <unk>=1, then the given words from id 2."""
    vocab = {WORDS_BOS: 0, WORDS_UNK: 1}
    for word in words:  # the schema refuses empty words, not repeated or spaced ones
        if word in vocab or any(c.isspace() for c in word):
            raise ValueError(f"tokenizer {name!r}: word {word!r} is duplicated or spaced")
        vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=WORDS_UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    backend.add_special_tokens([AddedToken(WORDS_BOS, special=True), AddedToken(WORDS_UNK, special=True)])
    return backend


def escape_token(token: str) -> str:
    """A token as the tokenizer spells it, with newline, tab and carriage return made visible."""
    return token.translate(str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r"}))
