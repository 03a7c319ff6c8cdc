"""Labelled positions for sparse probing (Gurnee et al. 2023, "Finding Neurons in a Haystack"): the spans
of the paper's feature datasets, built from a token shard alone, for the capture's `samples` accumulator.

Inputs: `tokens` [S, T] (S sequences of T tokens; position 0 is BOS and is never a positive or a negative of
any feature), per-token `sources` [S, T] (int16 codes into `source_names`, -1 where unlabelled; None for a
shard without labels) and `token_texts`, each vocabulary id's text as it reads inside a text (" the", "ing",
"\\n"). Output: one table of spans, columns `feature`, `seq`, `start`, `end` (end exclusive; a span's sample
is the mean activation over [start, end)) and `label` (a positive or a negative example of the feature).

Families:
- Token-level text features (the paper's), one position per span, every position 1..T-1 labelled:
  `text: leading space` (the text starts with a space), `text: capitalised` (its first letter is upper case
  and its other letters are not all upper case; a single capital letter counts), `text: all caps` (at least
  two letters, all upper case), `text: digits` (a digit anywhere), `text: punctuation` (the text stripped of
  white space is non-empty and every character is Unicode punctuation, category P*). Computed once per
  vocabulary id, then indexed by the token array.
- Word pieces: a token is alphabetic when its text, leading spaces removed, is non-empty and alphabetic; a
  word is a maximal run of alphabetic tokens in which every token after the first has no leading space (a
  leading space starts a new word). In words of at least two tokens, `text: first piece of a multi-token
  word`, `text: middle piece` and `text: last piece` mark the pieces; each feature's negatives are all other
  alphabetic positions (single-token words included).
- Position: `position < b` for each bin b, every position 1..T-1 labelled p < b. Default bins: the powers
  of two 4, 8, ... below T; bins not below T (no negatives) are skipped.
- Data source (the paper's Pile-subset context features): a run is a maximal stretch of one source code in
  a sequence, from position 1; its span starts `skip` tokens in (25, as the paper skips a document's first
  25 tokens: little context yet) and ends with the run, kept when at least `min_span` tokens remain. For
  every source name, `<group>: <name>` labels each kept run one-vs-rest. Unlabelled runs (-1) are no span of
  any feature: their source is unknown, so they are neither positives nor safe negatives. A run is a run of
  one source, not of one document (consecutive documents of one source merge).
  Sources come in groups, each a one-vs-rest family among its own sources (`groups`; e.g. `domain` over
  the English domains as the paper's Pile subsets, `language` over natural languages as its Europarl
  languages, `code` over programming languages as its GitHub languages): `<group>: <name>`. With
  `source_units` holding `token`, every position of those spans is also a one-token span of
  `<group> token: <name>`.
- Compound words: a bigram is (first word ids, second word ids), either word one or more tokens. Positives
  at the second word's last token where the first word directly precedes it; negatives at the second word's
  last token where it does not, and at the token right after the first word where the second word does not
  follow. A word never starts at BOS; where the sequence ends inside what could still be the second word,
  that position is not labelled (it cannot be told); a position that is a positive is never a negative.
  Name: `compound: <first> <second>`, each word's decoded text stripped.
- Word sets: `words: <name>` marks the last token of any word of a named set (each word one or more token
  ids) against every other position, the earlier tokens of a word excepted.
- Part of speech: `pos: <UPOS>` at the last token of every tagged word, one-vs-rest among the tagged words.
  A tagger's word is a word as above or a clitic right after one (a token of an apostrophe and letters:
  "'s", "'re", "'t"; the treebank the tagger learnt from splits clitics off); digits and punctuation are
  not words (the tagger learnt from a stream without them). A sentence ends after a token holding ".", "!",
  "?" or a newline, and where the tagged text begins or ends; each sentence's words are tagged together, in
  order (the tags read their neighbours). Only words inside the tagged positions (the runs of the sources
  named, e.g. English prose) are tagged; a word at a sequence's last position is not labelled (it may go on).

`balanced_spans` subsamples each feature to at most `limit` spans at the configured positive share: the
most spans n <= limit at which both classes can fill their share (n_pos = round(n * share)), so the share
is kept and the count gives way; each feature draws from its own seeded stream (seed and feature name), so
a feature's sample does not depend on the other features. A feature with fewer than `min_per_class`
positives or negatives (at least one of each) is dropped and named.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import polars as pl

from neuron_census.config import default_field, schema_defaults
from neuron_census.data.corpus import NO_SOURCE

SPAN_SCHEMA = {"feature": pl.Utf8, "seq": pl.Int64, "start": pl.Int64, "end": pl.Int64, "label": pl.Boolean}
TEXT_FEATURES: tuple[str, ...] = ("leading space", "capitalised", "all caps", "digits", "punctuation")
WORD_PIECES: tuple[str, ...] = ("first piece of a multi-token word", "middle piece", "last piece")
BUILT_IN_FAMILIES: tuple[str, ...] = ("text", "position", "compound", "words", "pos")  # the families that are no source group
SENTENCE_ENDS = frozenset(".!?\n")
CLITIC = re.compile(r"['\u2019][^\W\d_]+")  # an apostrophe and letters
_DEFAULTS = schema_defaults("$defs/probing_study")
_default = partial(default_field, _DEFAULTS)


@dataclass(frozen=True)
class FeatureSettings:
    position_bins: tuple[int, ...] | None = _default("position_bins")  # None: default_position_bins(T); bins not below T are skipped
    skip: int = _default("skip")  # leading tokens of a source run left out of its span
    min_span: int = _default("min_span")  # fewest tokens a source span keeps
    source_units: tuple[str, ...] = _default("source_units")  # source features over whole spans (mean activation) and/or single tokens
    positive_share: float = _default("positive_share")  # of a feature's spans after balanced_spans
    limit: int = _default("limit")  # most spans per feature after balanced_spans
    seed: int = _default("seed")
    # fewest positives and negatives a feature needs to be kept (a few test spans make F1 noise)
    min_per_class: int = _default("min_per_class")

    def __post_init__(self) -> None:
        if self.position_bins is not None:
            bins = list(self.position_bins)
            if not bins:
                raise ValueError("probe-feature position_bins must be None or hold at least one bin")
            if any(int(b) != b or b < 2 for b in bins):
                raise ValueError(f"probe-feature position_bins must be integers of at least 2, got {bins}")
            if any(b >= c for b, c in zip(bins, bins[1:])):
                raise ValueError(f"probe-feature position_bins must increase strictly, got {bins}")
        if not self.source_units or set(self.source_units) - {"span", "token"}:
            raise ValueError(f"probe-feature source_units must name span and/or token, got {list(self.source_units)}")
        if self.skip < 0:
            raise ValueError(f"probe-feature skip must be at least 0, got {self.skip}")
        if self.min_span < 1:
            raise ValueError(f"probe-feature min_span must be at least 1, got {self.min_span}")
        if not 0 < self.positive_share < 1:
            raise ValueError(f"probe-feature positive_share must be in (0, 1), got {self.positive_share}")
        if self.limit < 2:
            raise ValueError(f"probe-feature limit must be at least 2 (one span per class), got {self.limit}")
        if self.seed < 0:
            raise ValueError(f"probe-feature seed must be at least 0, got {self.seed}")
        if self.min_per_class < 1:
            raise ValueError(f"probe-feature min_per_class must be at least 1, got {self.min_per_class}")


def _empty() -> pl.DataFrame:
    return pl.DataFrame(schema=SPAN_SCHEMA)


def _spans(feature: str, seq: np.ndarray, start: np.ndarray, end: np.ndarray, label: np.ndarray) -> pl.DataFrame:
    """One feature's spans as a table of SPAN_SCHEMA."""
    return pl.DataFrame(
        {
            "feature": pl.repeat(feature, len(seq), dtype=pl.Utf8, eager=True),
            "seq": np.asarray(seq, dtype=np.int64), "start": np.asarray(start, dtype=np.int64),
            "end": np.asarray(end, dtype=np.int64), "label": np.asarray(label, dtype=bool),
        },
        schema=SPAN_SCHEMA,
    )


def _position_spans(feature: str, eligible: np.ndarray, positive: np.ndarray) -> pl.DataFrame:
    """One-position spans at the eligible positions of [S, T] masks (row-major, so sorted by seq, start)."""
    seq, pos = np.nonzero(eligible)
    return _spans(feature, seq, pos, pos + 1, positive[seq, pos])


def _checked_tokens(tokens: np.ndarray, vocab: int) -> np.ndarray:
    """tokens as int64 [S, T] with T >= 2 and every id in the vocabulary; a ValueError otherwise."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"probe features need tokens [S, T] with T >= 2 (BOS and one token), got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"probe features need integer token ids, got dtype {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):
        raise ValueError(f"probe features need token ids in 0..{vocab - 1}, got {tokens.min()}..{tokens.max()}")
    return tokens.astype(np.int64, copy=False)


def token_text_features(token_texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Each text feature (TEXT_FEATURES) and `alphabetic` as bool [V] per vocabulary id: computed once per id
    so a corpus's positions are a lookup."""
    out = {name: np.zeros(len(token_texts), dtype=bool) for name in (*TEXT_FEATURES, "alphabetic")}
    for i, text in enumerate(token_texts):
        letters = [c for c in text if c.isalpha()]
        stripped = text.strip()
        word = text.lstrip(" ")
        out["leading space"][i] = text.startswith(" ")
        out["capitalised"][i] = bool(letters) and letters[0].isupper() and not (len(letters) > 1 and all(c.isupper() for c in letters[1:]))
        out["all caps"][i] = len(letters) >= 2 and all(c.isupper() for c in letters)
        out["digits"][i] = any(c.isdigit() for c in text)
        out["punctuation"][i] = bool(stripped) and all(unicodedata.category(c).startswith("P") for c in stripped)
        out["alphabetic"][i] = bool(word) and word.isalpha()
    return out


def word_pieces(tokens: np.ndarray, token_texts: Sequence[str]) -> dict[str, np.ndarray]:
    """`alphabetic` and each WORD_PIECES feature as bool [S, T] (False at BOS): where a position sits in its
    word, a word being a run of alphabetic tokens that no leading space breaks."""
    tokens = _checked_tokens(tokens, len(token_texts))
    per_id = token_text_features(token_texts)
    alpha = per_id["alphabetic"][tokens]
    alpha[:, 0] = False
    space = per_id["leading space"][tokens]
    cont = np.zeros_like(alpha)  # continues the word of the token before
    cont[:, 1:] = alpha[:, 1:] & ~space[:, 1:] & alpha[:, :-1]
    next_cont = np.zeros_like(alpha)
    next_cont[:, :-1] = cont[:, 1:]
    return {
        "alphabetic": alpha,
        WORD_PIECES[0]: alpha & ~cont & next_cont,
        WORD_PIECES[1]: cont & next_cont,
        WORD_PIECES[2]: cont & ~next_cont,
    }


def text_spans(tokens: np.ndarray, token_texts: Sequence[str]) -> pl.DataFrame:
    """Spans of the token-level text features and the word pieces, one position each, `text: ` names."""
    tokens = _checked_tokens(tokens, len(token_texts))
    per_id = token_text_features(token_texts)
    every = np.ones(tokens.shape, dtype=bool)
    every[:, 0] = False
    frames = [_position_spans(f"text: {name}", every, per_id[name][tokens]) for name in TEXT_FEATURES]
    pieces = word_pieces(tokens, token_texts)
    frames += [_position_spans(f"text: {name}", pieces["alphabetic"], pieces[name]) for name in WORD_PIECES]
    return pl.concat(frames)


def default_position_bins(seq_len: int) -> tuple[int, ...]:
    """The powers of two 4, 8, ... below seq_len: every bin has positions on both sides."""
    return tuple(2**i for i in range(2, (seq_len - 1).bit_length()))


def position_spans(n_sequences: int, seq_len: int, bins: Sequence[int] | None = None) -> pl.DataFrame:
    """`position < b` spans at every position 1..seq_len-1 of every sequence; bins not below seq_len skipped."""
    if n_sequences < 0 or seq_len < 2:
        raise ValueError(f"position features need n_sequences >= 0 and seq_len >= 2, got {n_sequences} and {seq_len}")
    bins = default_position_bins(seq_len) if bins is None else tuple(int(b) for b in bins)
    seq = np.repeat(np.arange(n_sequences), seq_len - 1)
    pos = np.tile(np.arange(1, seq_len), n_sequences)
    frames = [_spans(f"position < {b}", seq, pos, pos + 1, pos < b) for b in bins if b < seq_len]
    return pl.concat(frames) if frames else _empty()


def source_spans(
    sources: np.ndarray, source_names: Sequence[str], skip: int = _DEFAULTS["skip"], min_span: int = _DEFAULTS["min_span"],
    groups: Mapping[str, Sequence[str]] | None = None, per_token: bool = False,
) -> pl.DataFrame:
    """`<group>: <name>` spans: every labelled run of one source, less its first `skip` tokens, kept when
    `min_span` tokens remain, labelled one-vs-rest among the runs of its group's sources (runs of sources
    outside the group are no span of its features). `groups` None: one group `source` of every name. A
    group's source that the shard does not hold has no feature. `per_token`: each position of those spans
    is a span of its own, named `<group> token: <name>` (the paper reports both: a French neuron reads F1
    0.99 per token, 1.0 over the span)."""
    sources = np.asarray(sources)
    if sources.ndim != 2 or sources.shape[1] < 2:
        raise ValueError(f"source features need sources [S, T] with T >= 2, got shape {sources.shape}")
    if not np.issubdtype(sources.dtype, np.integer):
        raise ValueError(f"source features need integer source codes, got dtype {sources.dtype}")
    if sources.size and (sources.min() < NO_SOURCE or sources.max() >= len(source_names)):
        raise ValueError(f"source features need codes in -1..{len(source_names) - 1}, got {sources.min()}..{sources.max()}")
    if skip < 0 or min_span < 1:
        raise ValueError(f"source features need skip >= 0 and min_span >= 1, got {skip} and {min_span}")
    seq_len = sources.shape[1]
    starts = np.zeros(sources.shape, dtype=bool)
    starts[:, 1] = True
    starts[:, 2:] = sources[:, 2:] != sources[:, 1:-1]
    seq, run_start = np.nonzero(starts)
    same = seq[1:] == seq[:-1]
    run_end = np.append(np.where(same, run_start[1:], seq_len), seq_len)
    code = sources[seq, run_start]
    start = run_start + skip
    keep = (code != NO_SOURCE) & (run_end - start >= min_span)
    seq, start, end, code = seq[keep], start[keep], run_end[keep], code[keep]
    suffix = ""
    if per_token:
        lengths = end - start
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        seq, code, start = np.repeat(seq, lengths), np.repeat(code, lengths), np.repeat(start, lengths) + offsets
        end, suffix = start + 1, " token"
    groups = {"source": list(source_names)} if groups is None else groups
    index = {name: i for i, name in enumerate(source_names)}
    frames = []
    for group, names in groups.items():
        if len(set(names)) != len(names):
            raise ValueError(f"source group {group!r} repeats a source: {list(names)}")
        codes = [index[name] for name in names if name in index]
        inside = np.isin(code, codes)
        frames += [_spans(f"{group}{suffix}: {source_names[i]}", seq[inside], start[inside], end[inside], code[inside] == i) for i in codes]
    return pl.concat(frames) if frames else _empty()


def _word_starts(tokens: np.ndarray, word: tuple[int, ...]) -> np.ndarray:
    """bool [S, T]: the word's tokens start here (never at BOS, never running past the sequence's end)."""
    n_seq, seq_len = tokens.shape
    out = np.zeros(tokens.shape, dtype=bool)
    room = seq_len - len(word)  # start positions 1..room
    if room >= 1:
        match = np.ones((n_seq, room), dtype=bool)
        for j, token in enumerate(word):
            match &= tokens[:, 1 + j : 1 + j + room] == token
        out[:, 1 : room + 1] = match
    return out


def compound_spans(tokens: np.ndarray, token_texts: Sequence[str], bigrams: Sequence[tuple[Sequence[int], Sequence[int]]]) -> pl.DataFrame:
    """`compound: <first> <second>` spans, one position each: the second word's last token after the first
    word (positive) or not (negative), and the token after the first word where the second does not follow
    (negative)."""
    tokens = _checked_tokens(tokens, len(token_texts))
    seq_len = tokens.shape[1]
    frames = []
    for pair in bigrams:
        if len(pair) != 2:
            raise ValueError(f"a compound bigram is (first word ids, second word ids), got {pair!r}")
        first, second = (tuple(int(i) for i in word) for word in pair)
        if not first or not second:
            raise ValueError(f"a compound bigram needs both words non-empty, got {pair!r}")
        if any(not 0 <= i < len(token_texts) for i in (*first, *second)):
            raise ValueError(f"a compound bigram's ids must be in 0..{len(token_texts) - 1}, got {pair!r}")
        n1, n2 = len(first), len(second)
        first_at, second_at = _word_starts(tokens, first), _word_starts(tokens, second)
        preceded = np.zeros_like(first_at)  # the first word ends right before this position
        preceded[:, n1:] = first_at[:, : seq_len - n1]
        positive = np.zeros_like(first_at)
        negative = np.zeros_like(first_at)
        positive[:, n2 - 1 :] = (second_at & preceded)[:, : seq_len - n2 + 1]
        negative[:, n2 - 1 :] = (second_at & ~preceded)[:, : seq_len - n2 + 1]
        undecided = np.zeros_like(first_at)  # the sequence ends inside what may still be the second word
        for e in range(max(1, seq_len - n2 + 1), seq_len):
            undecided[:, e] = (tokens[:, e:] == np.asarray(second[: seq_len - e])).all(axis=1)
        negative |= preceded & ~second_at & ~undecided
        name = f"compound: {''.join(token_texts[i] for i in first).strip()} {''.join(token_texts[i] for i in second).strip()}"
        frames.append(_position_spans(name, positive | negative, positive))  # a positive is never a negative
    return pl.concat(frames) if frames else _empty()


def word_set_spans(tokens: np.ndarray, vocab: int, word_sets: Mapping[str, Sequence[Sequence[int]]]) -> pl.DataFrame:
    """`words: <name>` spans, one position each: for each named set of words (each word one or more token
    ids), positives at the last token of every occurrence of a word of the set, negatives at every other
    position after BOS except the earlier tokens of an occurrence (inside the word: neither)."""
    tokens = _checked_tokens(tokens, vocab)
    seq_len = tokens.shape[1]
    frames = []
    for name, words in word_sets.items():
        words = [tuple(int(i) for i in word) for word in words]
        if not words or any(not word for word in words):
            raise ValueError(f"word set {name!r} needs at least one word, each of at least one token, got {words}")
        if any(not 0 <= i < vocab for word in words for i in word):
            raise ValueError(f"word set {name!r}: token ids must be in 0..{vocab - 1}, got {words}")
        positive = np.zeros(tokens.shape, dtype=bool)
        inside = np.zeros(tokens.shape, dtype=bool)
        for word in words:
            at = _word_starts(tokens, word)
            n = len(word)
            positive[:, n - 1 :] |= at[:, : seq_len - n + 1]
            for j in range(n - 1):
                inside[:, j:] |= at[:, : seq_len - j]
        eligible = positive | ~inside
        eligible[:, 0] = False
        frames.append(_position_spans(f"words: {name}", eligible, positive))
    return pl.concat(frames) if frames else _empty()


def tagger_words(tokens: np.ndarray, token_texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The tagger's words as bool [S, T] masks of their first and last tokens (paired in row-major order):
    runs of alphabetic pieces (as `word_pieces`) and clitics right after one."""
    pieces = word_pieces(tokens, token_texts)
    alpha = pieces["alphabetic"]
    cont = pieces[WORD_PIECES[1]] | pieces[WORD_PIECES[2]]
    next_cont = pieces[WORD_PIECES[0]] | pieces[WORD_PIECES[1]]
    clitic = np.zeros_like(alpha)
    clitic[:, 1:] = np.array([bool(CLITIC.fullmatch(text)) for text in token_texts], dtype=bool)[tokens[:, 1:]] & alpha[:, :-1]
    return (alpha & ~cont) | clitic, (alpha & ~next_cont) | clitic


def pos_spans(
    tokens: np.ndarray, token_texts: Sequence[str], tag_words: Callable[[Sequence[str]], Sequence[str]], tagged: np.ndarray | None = None
) -> pl.DataFrame:
    """`pos: <tag>` spans, one position each: the last token of every word inside `tagged` (bool [S, T]; None:
    every position), labelled one-vs-rest by the tag `tag_words` gives it among its sentence's words."""
    tokens = _checked_tokens(tokens, len(token_texts))
    n_seq, seq_len = tokens.shape
    tagged = np.ones(tokens.shape, dtype=bool) if tagged is None else np.asarray(tagged, dtype=bool)
    if tagged.shape != tokens.shape:
        raise ValueError(f"part-of-speech features need a tagged mask shaped as tokens {tokens.shape}, got {tagged.shape}")
    first, last = tagger_words(tokens, token_texts)
    ends = np.array([any(c in SENTENCE_ENDS for c in text) for text in token_texts], dtype=bool)[tokens]
    region = np.cumsum(np.concatenate([np.zeros((n_seq, 1), bool), tagged[:, 1:] != tagged[:, :-1]], axis=1), axis=1)
    sentence = np.cumsum(ends, axis=1) + region  # grows after every sentence end (never a word token) and at every change of tagged
    seq, start = np.nonzero(first)
    _, end = np.nonzero(last)
    inside = tagged[seq, start] & (region[seq, start] == region[seq, end])
    seq, start, end = seq[inside], start[inside], end[inside]
    texts = np.asarray(token_texts, dtype=object)
    words = ["".join(texts[tokens[s, a : b + 1]]).strip() for s, a, b in zip(seq.tolist(), start.tolist(), end.tolist())]
    key = np.stack([seq, sentence[seq, start]], axis=1)
    cuts = np.flatnonzero((key[1:] != key[:-1]).any(axis=1)) + 1
    tags: list[str] = []
    for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(words)]):
        found = list(tag_words(words[a:b]))
        if len(found) != b - a:
            raise ValueError(f"the part-of-speech tagger gave {len(found)} tags for {b - a} words: {words[a:b]}")
        tags += found
    labelled = end < seq_len - 1
    seq, end, tag = seq[labelled], end[labelled], np.asarray(tags, dtype=object)[labelled]
    frames = [_spans(f"pos: {name}", seq, end, end + 1, tag == name) for name in sorted(set(tag.tolist()))]
    return pl.concat(frames) if frames else _empty()


def feature_spans(
    tokens: np.ndarray,
    sources: np.ndarray | None,
    source_names: Sequence[str],
    token_texts: Sequence[str],
    settings: FeatureSettings,
    bigrams: Sequence[tuple[Sequence[int], Sequence[int]]] = (),
    source_groups: Mapping[str, Sequence[str]] | None = None,
    word_sets: Mapping[str, Sequence[Sequence[int]]] | None = None,
    pos_sources: Sequence[str] | str = (),
    tag_words: Callable[[Sequence[str]], Sequence[str]] | None = None,
) -> pl.DataFrame:
    """Every family's spans (no sources: no source family), sorted by (feature, seq, start, end).
    `pos_sources`: the sources whose text is tagged for part of speech (`tag_words`), or "all" for every
    position; a shard without sources has no tagged text unless "all"."""
    tokens = _checked_tokens(tokens, len(token_texts))
    frames = [text_spans(tokens, token_texts), position_spans(tokens.shape[0], tokens.shape[1], settings.position_bins)]
    if sources is not None:
        if np.shape(sources) != tokens.shape:
            raise ValueError(f"probe features need sources shaped as tokens {tokens.shape}, got {np.shape(sources)}")
        for per_token in sorted({unit == "token" for unit in settings.source_units}):
            frames.append(source_spans(sources, source_names, settings.skip, settings.min_span, source_groups, per_token))
    frames.append(compound_spans(tokens, token_texts, bigrams))
    frames.append(word_set_spans(tokens, len(token_texts), word_sets or {}))
    if pos_sources:
        if tag_words is None:
            raise ValueError("part-of-speech features need a tagger (tag_words)")
        if pos_sources == "all":
            frames.append(pos_spans(tokens, token_texts, tag_words))
        elif sources is not None:
            codes = [i for i, name in enumerate(source_names) if name in set(pos_sources)]
            if codes:
                frames.append(pos_spans(tokens, token_texts, tag_words, np.isin(sources, codes)))
    return pl.concat(frames).sort("feature", "seq", "start", "end")


def feature_family(feature: str) -> str:
    """The family a feature name belongs to: the part before ": " (`text`, a source group, `compound`,
    `words`, `pos`), or `position` for the position bins."""
    if feature.startswith("position <"):
        return "position"
    return feature.split(": ", 1)[0]


def balanced_spans(
    table: pl.DataFrame, positive_share: float = _DEFAULTS["positive_share"], limit: int = _DEFAULTS["limit"],
    seed: int = _DEFAULTS["seed"], min_per_class: int = _DEFAULTS["min_per_class"]
) -> tuple[pl.DataFrame, tuple[str, ...]]:
    """Each feature subsampled to at most `limit` spans at `positive_share` positives (the share kept, the
    count giving way), seeded per feature; the table sorted by (feature, seq, start, end) and the names of
    the features dropped for having fewer than `min_per_class` positives or negatives."""
    FeatureSettings(positive_share=positive_share, limit=limit, seed=seed, min_per_class=min_per_class)  # checks them
    missing = [key for key in SPAN_SCHEMA if key not in table.columns]
    if missing:
        raise ValueError(f"balanced_spans needs columns {list(SPAN_SCHEMA)}, missing {missing}")
    kept, dropped = [], []
    for (feature,), group in table.sort("feature", "seq", "start", "end").group_by("feature", maintain_order=True):
        label = group["label"].to_numpy().astype(bool)
        positives, negatives = np.flatnonzero(label), np.flatnonzero(~label)
        if min(len(positives), len(negatives)) < min_per_class:
            dropped.append(feature)
            continue
        n = min(limit, int(np.floor(len(positives) / positive_share + 1e-9)), int(np.floor(len(negatives) / (1 - positive_share) + 1e-9)))
        n_pos = min(len(positives), max(1, round(n * positive_share)))
        n_neg = min(len(negatives), max(1, n - n_pos))
        rng = np.random.default_rng([seed, zlib.crc32(feature.encode())])
        rows = np.concatenate([rng.choice(positives, n_pos, replace=False), rng.choice(negatives, n_neg, replace=False)])
        kept.append(group[np.sort(rows)])
    out = pl.concat(kept) if kept else _empty()
    return out.select(list(SPAN_SCHEMA)).cast(SPAN_SCHEMA), tuple(dropped)
