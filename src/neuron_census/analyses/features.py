"""Binary features of a token and its context that neuron families are named after (Gurnee et al. 2024,
Sec. 4.2): a neuron belongs to the family of the feature that explains most of its activation's variance.

Features of the current token and the same ones of the previous token:

- `token`: a word form and its variants: the token's text without its leading space, lower-cased (" The",
  "the", "THE" are one group); the `token_groups` forms most frequent in the study's tokens.
- `alphabet`: the form starts with a given letter a-z.
- `class`: space-prefixed, capitalised, all caps, a number, punctuation, and common English suffixes
  and prefixes (`SUFFIXES`, `PREFIXES`) of alphabetic forms longer than the affix by two letters.

And of the position: `position` "< p" for p = 2, 4, 8, ... below the sequence length (BOS at position 0).
And of the context: `context` = the source the token's document comes from (its bundled domain, file or
`hf.label_field` value: the token shards' `sources`), one feature per source met in the study's shards.
Token features are a [vocab, features] indicator matrix, read by the previous token's id as by the current.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

SUFFIXES = ("ing", "ed", "ly", "s", "tion", "er", "est", "ment", "ness", "able", "al", "ity")
PREFIXES = ("un", "re", "in", "dis", "pre", "over", "non")
PUNCTUATION = set(string.punctuation) | set("“”‘’«»—–…")
TOKEN_KINDS = ("token", "alphabet", "class")
KINDS = (*TOKEN_KINDS, *(f"prev_{kind}" for kind in TOKEN_KINDS), "position", "context")  # in the order figures list them

FEATURES_SCHEMA = {"feature": pl.Utf8(), "kind": pl.Utf8(), "tokens": pl.List(pl.Int64), "below": pl.Int64(), "source": pl.Utf8()}


def word_form(text: str) -> str:
    """A token's word form: its text without surrounding whitespace, lower-cased."""
    return text.strip().lower()


def token_classes(text: str) -> list[str]:
    """The `class` features a token's text has."""
    form = text.strip()
    classes = []
    if text.startswith(" ") and form:
        classes.append("space-prefixed")
    letters = [c for c in form if c.isalpha()]
    if form[:1].isupper() and not (len(letters) > 1 and all(c.isupper() for c in letters)):
        classes.append("capitalised")
    if len(letters) > 1 and all(c.isupper() for c in letters):
        classes.append("all caps")
    if form and all(c.isdigit() or c in ",." for c in form) and any(c.isdigit() for c in form):
        classes.append("number")
    if form and all(c in PUNCTUATION for c in form):
        classes.append("punctuation")
    lower = form.lower()
    if lower.isalpha():
        classes += [f"suffix -{s}" for s in SUFFIXES if lower.endswith(s) and len(lower) >= len(s) + 2]
        classes += [f"prefix {p}-" for p in PREFIXES if lower.startswith(p) and len(lower) >= len(p) + 2]
    return classes


def frequent_forms(tokens: Iterable[np.ndarray], texts: Sequence[str], special: Iterable[int], count: int) -> list[str]:
    """The `count` word forms most frequent in `tokens` (ties by the form), special tokens and empty forms
    left out."""
    per_id = np.zeros(len(texts), dtype=np.int64)
    for block in tokens:
        per_id += np.bincount(np.asarray(block, dtype=np.int64).reshape(-1), minlength=len(texts))[: len(texts)]
    per_id[list(special)] = 0
    forms: Counter[str] = Counter()
    for token, n in enumerate(per_id):
        form = word_form(texts[token])
        if n and form:
            forms[form] += int(n)
    return [form for form, _ in sorted(forms.items(), key=lambda item: (-item[1], item[0]))[:count]]


def feature_table(
    texts: Sequence[str], forms: Sequence[str], special: Iterable[int], seq_len: int, sources: Sequence[str] = ()
) -> pl.DataFrame:
    """Every feature (FEATURES_SCHEMA): a `token`, `alphabet` or `class` feature with its token ids (the
    `prev_` ones read the same ids at the previous position), a `position` feature "< below", or a
    `context` feature, one per name in `sources`."""
    special = set(special)
    members: dict[tuple[str, str], list[int]] = {}
    wanted = set(forms)
    for kind, name in [("token", form) for form in forms] + [("alphabet", c) for c in string.ascii_lowercase]:
        members[kind, name] = []
    for token, text in enumerate(texts):
        if token in special:
            continue
        form = word_form(text)
        if form in wanted:
            members["token", form].append(token)
        if form and form[0] in string.ascii_lowercase:
            members["alphabet", form[:1]].append(token)
        for name in token_classes(text):
            members.setdefault(("class", name), []).append(token)
    rows = []
    for prefix in ("", "prev_"):
        for (kind, name), ids in members.items():
            if ids:
                rows.append({"feature": f"{prefix}{kind}: {name}", "kind": f"{prefix}{kind}", "tokens": ids, "below": None, "source": None})
    for below in (2**i for i in range(1, (seq_len - 1).bit_length())):  # 2, 4, 8, ... below seq_len
        rows.append({"feature": f"position < {below}", "kind": "position", "tokens": None, "below": below, "source": None})
    for source in sources:
        rows.append({"feature": f"context: {source}", "kind": "context", "tokens": None, "below": None, "source": source})
    return pl.DataFrame(rows, schema=FEATURES_SCHEMA)


@dataclass(frozen=True)
class FeatureMatrices:
    """The indicator matrices a capture multiplies: the current token's features [vocab, F_cur], the
    previous token's [vocab, F_prev] and the position's [seq_len, F_pos], then the context features'
    sources (`sources`, a token's source code picks one column), columns in table order."""

    current: np.ndarray
    previous: np.ndarray
    position: np.ndarray
    sources: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return self.current.shape[1] + self.previous.shape[1] + self.position.shape[1] + len(self.sources)

    def context_columns(self, codes: np.ndarray, names: Sequence[str]) -> np.ndarray:
        """A shard's source codes (indices into its `names`, -1 unlabelled) as context columns (int64, -1
        where the token's source has no feature)."""
        lookup = np.asarray([self.sources.index(name) if name in self.sources else -1 for name in names] + [-1], dtype=np.int64)
        return lookup[np.where(codes >= 0, codes, len(names))]


def feature_matrices(table: pl.DataFrame, vocab_size: int, seq_len: int) -> FeatureMatrices:
    """float32 0/1 matrices of `feature_table`'s rows: its token features, then its previous-token features,
    then its position features, then its context features, the order `feature_table` lists them in (checked)."""
    if "source" not in table.columns:  # a table written before context features
        table = table.with_columns(source=pl.lit(None, dtype=pl.Utf8))
    current = table.filter(~pl.col("kind").str.starts_with("prev_") & ~pl.col("kind").is_in(["position", "context"]))
    previous = table.filter(pl.col("kind").str.starts_with("prev_"))
    position = table.filter(pl.col("kind") == "position")
    context = table.filter(pl.col("kind") == "context")
    if pl.concat([current, previous, position, context])["feature"].to_list() != table["feature"].to_list():
        raise ValueError("a feature table lists token, then previous-token, then position, then context features")

    def indicator(rows: pl.DataFrame, size: int) -> np.ndarray:
        matrix = np.zeros((size, rows.height), dtype=np.float32)
        for index, (tokens, below) in enumerate(zip(rows["tokens"].to_list(), rows["below"].to_list())):
            if tokens is not None:
                matrix[np.asarray(tokens, dtype=np.int64), index] = 1.0
            else:
                matrix[:below, index] = 1.0
        return matrix

    return FeatureMatrices(
        indicator(current, vocab_size), indicator(previous, vocab_size), indicator(position, seq_len), tuple(context["source"].to_list())
    )
