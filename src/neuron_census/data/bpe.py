"""Byte-level BPE tokenizer with OPT's special-token ids, trained on the pipeline's own corpus.

The pipeline's OPT models are trained from scratch on a small corpus, so they get a small vocabulary
of their own; keeping OPT's ids for the special tokens (`<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, with
`</s>` prepended as BOS) lets the rest of the package treat them exactly like real OPT checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from neuron_census.atomic import atomic_path

SPECIAL_TOKENS: tuple[str, ...] = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, as in OPT
BOS_TOKEN = "</s>"  # OPT prepends </s> (id 2), not <s>
# what transformers needs to load the folder offline as an OPT-style fast tokenizer
SPECIAL_TOKENS_MAP = {"bos_token": BOS_TOKEN, "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
TOKENIZER_CONFIG = {"tokenizer_class": "PreTrainedTokenizerFast", **SPECIAL_TOKENS_MAP, "add_prefix_space": False,
                    "clean_up_tokenization_spaces": False}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path) -> None:
    """Train on `texts` and write `out_dir` (tokenizer.json, tokenizer_config.json, special_tokens_map.json)
    atomically; the result depends only on `texts` and `vocab_size`."""
    n_base = len(SPECIAL_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < n_base:
        raise ValueError(f"vocab_size must be at least {n_base} (specials + 256 bytes), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for expected_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != expected_id:
            raise RuntimeError(f"special token {token} got id {tokenizer.token_to_id(token)}, expected {expected_id}")
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    # Prepend BOS the way OPT's tokenizer does, so encodings match what the models were trained on.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A:0", pair=f"{BOS_TOKEN} $A:0 {BOS_TOKEN} $B:1", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        tokenizer.save(str(tmp / "tokenizer.json"), pretty=True)
        (tmp / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2, sort_keys=True) + "\n")
        (tmp / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS_MAP, indent=2, sort_keys=True) + "\n")


def read_trained_bpe(folder: Path) -> tuple[Tokenizer, dict[str, int]] | None:
    """The backend and special-token ids of a folder `train_bpe_tokenizer` wrote, read with `tokenizers`
    alone; None for any other folder.

    transformers' AutoTokenizer returns this very backend for such a folder (tested), but importing it costs
    seconds in every job that only needs token strings."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        special = json.loads((folder / "special_tokens_map.json").read_text())
    except (OSError, ValueError):
        return None
    if config != TOKENIZER_CONFIG or special != SPECIAL_TOKENS_MAP or not (folder / "tokenizer.json").is_file():
        return None
    backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ids = {role: backend.token_to_id(token) for role, token in SPECIAL_TOKENS_MAP.items()}
    return (backend, ids) if None not in ids.values() else None
