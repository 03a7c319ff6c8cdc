"""Sparse probing's feature datasets (Gurnee et al. 2023): every text feature and word piece at every position
of a hand-built corpus, position bins against a loop, source runs, compound words, balancing, span bounds,
and bad settings and shapes."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from neuron_census.analyses.probe_features import (
    SPAN_SCHEMA,
    TEXT_FEATURES,
    WORD_PIECES,
    FeatureSettings,
    balanced_spans,
    compound_spans,
    default_position_bins,
    feature_family,
    feature_spans,
    pos_spans,
    position_spans,
    source_spans,
    tagger_words,
    text_spans,
    token_text_features,
    word_pieces,
    word_set_spans,
)

TEXTS = [
    "<s>", " The", " cat", "ing", "ABC", " 42", ",", " ice", " cream", "\n",
    " un", "believ", "able", " NASA", "A", " x2", "...", " hot", " dog",
]
TOKENS = np.array([
    [0, 1, 2, 3, 6, 10, 11, 12],  # " The cating, unbelievable"
    [0, 3, 4, 14, 9, 13, 5, 16],  # "ingABCA\n NASA 42..."
    [0, 7, 8, 17, 18, 7, 2, 15],  # " ice cream hot dog ice cat x2"
])
# per feature, per sequence, positions 1..7: 1 positive, 0 negative, . unlabelled
EXPECTED = {
    "leading space": ("1100100", "0000110", "1111111"),
    "capitalised": ("1000000", "0010000", "0000000"),
    "all caps": ("0000000", "0100100", "0000000"),
    "digits": ("0000000", "0000010", "0000001"),
    "punctuation": ("0001000", "0000001", "0000000"),
    "first piece of a multi-token word": ("010.100", "100.0..", "000000."),
    "middle piece": ("000.010", "010.0..", "000000."),
    "last piece": ("001.001", "001.0..", "000000."),
}


def _labels_by_position(table: pl.DataFrame, feature: str) -> dict[tuple[int, int], bool]:
    rows = table.filter(pl.col("feature") == feature)
    assert (rows["end"] - rows["start"] == 1).all()
    return {(s, p): bool(y) for s, p, y in zip(rows["seq"], rows["start"], rows["label"])}


def test_text_features_and_word_pieces_at_every_position():
    table = text_spans(TOKENS, TEXTS)
    assert table.schema == pl.Schema(SPAN_SCHEMA)
    assert sorted(table["feature"].unique()) == sorted(f"text: {name}" for name in (*TEXT_FEATURES, *WORD_PIECES))
    for name, per_seq in EXPECTED.items():
        expected = {(s, p + 1): c == "1" for s, row in enumerate(per_seq) for p, c in enumerate(row) if c != "."}
        assert _labels_by_position(table, f"text: {name}") == expected, name


def test_per_id_features_and_piece_masks():
    per_id = token_text_features(TEXTS)
    assert np.flatnonzero(per_id["alphabetic"]).tolist() == [1, 2, 3, 4, 7, 8, 10, 11, 12, 13, 14, 17, 18]
    assert not per_id["punctuation"][9] and not per_id["punctuation"][0]  # white space only; "<" is a symbol
    pieces = word_pieces(TOKENS, TEXTS)
    assert not pieces["alphabetic"][:, 0].any()
    together = pieces[WORD_PIECES[0]].astype(int) + pieces[WORD_PIECES[1]] + pieces[WORD_PIECES[2]]
    assert together.max() == 1 and not (together.astype(bool) & ~pieces["alphabetic"]).any()


def test_position_bins_against_a_loop():
    n_seq, seq_len = 3, 20
    assert default_position_bins(seq_len) == (4, 8, 16)
    assert default_position_bins(16) == (4, 8)
    for bins, used in ((None, (4, 8, 16)), ((2, 5, 30), (2, 5))):
        table = position_spans(n_seq, seq_len, bins)
        expected = [(f"position < {b}", s, p, p + 1, p < b) for b in used for s in range(n_seq) for p in range(1, seq_len)]
        assert sorted(table.rows()) == sorted(expected)


def test_source_runs_skip_min_span_and_unlabelled():
    names = ("web", "code", "books")
    sources = np.full((2, 40), -1, dtype=np.int16)
    sources[0, 1:10] = 0  # run [1, 10): span [4, 10)
    sources[0, 10:16] = 1  # run [10, 16): 3 tokens after the skip, dropped
    sources[0, 26:] = 2  # run [26, 40): span [29, 40); positions 16..25 unlabelled
    sources[1, :] = 1  # BOS labelled too: the run still starts at 1
    table = source_spans(sources, names, skip=3, min_span=4)
    spans = {(0, 4, 10): 0, (0, 29, 40): 2, (1, 4, 40): 1}
    expected = [(f"source: {name}", *span, code == i) for i, name in enumerate(names) for span, code in spans.items()]
    assert sorted(table.rows()) == sorted(expected)
    assert len(source_spans(sources, names, skip=3, min_span=3)) == 3 * 4  # the short run comes back
    assert len(source_spans(sources, names, skip=0, min_span=4).filter(pl.col("start") == 1)) == 3 * 2
    only_unlabelled = np.full((1, 40), -1, dtype=np.int16)
    assert source_spans(only_unlabelled, names, skip=0, min_span=1).is_empty()


def test_source_groups_are_one_vs_rest_within_their_sources():
    names = ("wiki", "fr", "de", "go")
    sources = np.full((4, 12), -1, dtype=np.int16)
    for row, code in enumerate((0, 1, 2, 3)):
        sources[row, 1:] = code
    groups = {"domain": ["wiki"], "language": ["fr", "de", "nl"], "code": ["go"]}
    table = source_spans(sources, names, skip=2, min_span=4, groups=groups)
    by_feature = {f: sorted(g.select("seq", "label").rows()) for (f,), g in table.group_by("feature")}
    assert by_feature == {
        "domain: wiki": [(0, True)],  # a group of one source: no negative (balanced_spans drops it)
        "language: fr": [(1, True), (2, False)],  # runs of other groups are no span of a language
        "language: de": [(1, False), (2, True)],  # nl: not in the shard, no feature
        "code: go": [(3, True)],
    }
    assert set(table["start"].to_list()) == {3} and set(table["end"].to_list()) == {12}
    with pytest.raises(ValueError, match="repeats a source"):
        source_spans(sources, names, groups={"language": ["fr", "fr"]})


def test_source_tokens_are_every_position_of_the_source_spans():
    names = ("web", "code")
    sources = np.full((2, 20), -1, dtype=np.int16)
    sources[0, 1:12], sources[0, 12:], sources[1, 1:] = 0, 1, 1
    spans = source_spans(sources, names, skip=3, min_span=2)
    tokens = source_spans(sources, names, skip=3, min_span=2, per_token=True)
    expected = sorted(
        (feature.replace("source", "source token"), seq, p, p + 1, label)
        for feature, seq, start, end, label in spans.rows() for p in range(start, end)
    )
    assert sorted(tokens.rows()) == expected and len(expected) == 2 * (8 + 5 + 16)
    settings = FeatureSettings(source_units=("span", "token"), position_bins=(4,), skip=3, min_span=2)
    both = feature_spans(np.zeros((2, 20), dtype=np.int64), sources, names, TEXTS, settings)
    assert {f for f in both["feature"].unique().to_list() if "web" in f} == {"source: web", "source token: web"}
    assert feature_family("source token: web") == "source token"
    with pytest.raises(ValueError, match="source_units"):
        FeatureSettings(source_units=("word",))


def test_word_sets_mark_the_last_token_of_each_word():
    tokens = np.array([
        [0, 7, 8, 2, 17, 7, 9],  # ice cream | cat | hot | ice | \n
        [7, 2, 2, 18, 7, 8, 7],  # BOS position is never labelled; ice at the end: not inside a finished word
    ])
    table = word_set_spans(tokens, len(TEXTS), {"food": [(7, 8), (18,)], "cat": [(2,)]})
    assert _labels_by_position(table, "words: food") == {
        (0, 2): True, (0, 3): False, (0, 4): False, (0, 5): False, (0, 6): False,  # (0, 1): inside "ice cream"
        (1, 1): False, (1, 2): False, (1, 3): True, (1, 5): True, (1, 6): False,  # (1, 4): inside
    }
    cats = _labels_by_position(table, "words: cat")
    assert {key for key, label in cats.items() if label} == {(0, 3), (1, 1), (1, 2)} and len(cats) == 12
    with pytest.raises(ValueError, match="at least one word"):
        word_set_spans(tokens, len(TEXTS), {"none": []})
    with pytest.raises(ValueError, match="token ids must be in"):
        word_set_spans(tokens, len(TEXTS), {"far": [(99,)]})


POS_TEXTS = ["<s>", " The", " dog", " ran", ".", " It", "'s", " fun", "ny", "\n", " 3", ",", " a", "b", " x"]


def _length_tags(calls: list[list[str]]):
    """A stand-in tagger whose tag tells the word's length and first letter's case; records each sentence."""
    def tag(words):
        calls.append(list(words))
        return [("U" if w[0].isupper() else "L") + str(len(w)) for w in words]
    return tag


def _context_tags(words):
    """A stand-in tagger whose tags depend on the sentence: each word's place in it and the sentence's length."""
    return [f"{i}/{len(words)}" for i in range(len(words))]


def _slow_pos(tokens, texts, tagged, tag):
    """Reference: walk each sequence token by token, building the tagger's words and sentences by hand."""
    labels = {}
    for s, row in enumerate(tokens):
        words, word, sentence, prev_alpha = [], None, 0, False  # word: [text, last position, sentence, inside]
        for p in range(1, len(row)):
            text = texts[row[p]]
            if p > 1 and tagged[s, p] != tagged[s, p - 1]:
                sentence += 1
            bare = text.lstrip(" ")
            alpha = bool(bare) and bare.isalpha()
            if alpha and prev_alpha and not text.startswith(" "):
                word[0] += text
                word[1] = p
                word[3] = word[3] and bool(tagged[s, p])
            elif alpha or (prev_alpha and len(text) > 1 and text[0] == "'" and text[1:].isalpha()):
                word = [text.strip(), p, sentence, bool(tagged[s, p])]
                words.append(word)
            prev_alpha = alpha
            if any(c in ".!?\n" for c in text):
                sentence += 1
        words = [w for w in words if w[3]]
        for key in dict.fromkeys(w[2] for w in words):
            group = [w for w in words if w[2] == key]
            for w, found in zip(group, tag([w[0] for w in group])):
                if w[1] < len(row) - 1:
                    labels[(s, w[1])] = found
    return labels


def test_part_of_speech_words_sentences_and_labels():
    tokens = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 13, 12]])  # The dog ran. It's funny\n Theb a
    first, last = tagger_words(tokens, POS_TEXTS)
    assert np.flatnonzero(first[0]).tolist() == [1, 2, 3, 5, 6, 7, 10, 12]
    assert np.flatnonzero(last[0]).tolist() == [1, 2, 3, 5, 6, 8, 11, 12]
    calls: list[list[str]] = []
    table = pos_spans(tokens, POS_TEXTS, _length_tags(calls))
    assert calls == [["The", "dog", "ran"], ["It", "'s", "funny"], ["Theb", "a"]]  # "a" at the end: tagged, not labelled
    labels = {(s, p): f for f, s, p, e, y in table.rows() if y}
    assert labels == {(0, 1): "pos: U3", (0, 2): "pos: L3", (0, 3): "pos: L3", (0, 5): "pos: U2", (0, 6): "pos: L2", (0, 8): "pos: L5", (0, 11): "pos: U4"}
    assert table.group_by("feature").len().sort("feature").rows() == [("pos: L2", 7), ("pos: L3", 7), ("pos: L5", 7), ("pos: U2", 7), ("pos: U3", 7), ("pos: U4", 7)]
    tagged = np.ones_like(tokens, dtype=bool)
    tagged[0, 6:] = False  # "'s" and after: untagged text
    calls.clear()
    part = pos_spans(tokens, POS_TEXTS, _length_tags(calls), tagged)
    assert calls == [["The", "dog", "ran"], ["It"]] and sorted(part["start"].unique().to_list()) == [1, 2, 3, 5]
    assert feature_family("pos: NOUN") == "pos"


def test_part_of_speech_against_a_token_walk():
    rng = np.random.default_rng(3)
    for trial in range(20):
        tokens = rng.integers(1, len(POS_TEXTS), size=(4, 24))
        tokens[:, 0] = 0
        tagged = np.repeat(rng.random((4, 6)) < 0.7, 4, axis=1)
        table = pos_spans(tokens, POS_TEXTS, _context_tags, tagged)
        got = {(s, p): f.removeprefix("pos: ") for f, s, p, e, y in table.rows() if y}
        assert got == _slow_pos(tokens, POS_TEXTS, tagged, _context_tags), trial
        assert len(table) == len(got) * table["feature"].n_unique()  # every labelled word in every feature


def test_part_of_speech_in_feature_spans_follows_the_sources():
    tokens = np.array([[0, 1, 2, 3, 4, 5, 7, 8, 9, 1, 2, 3, 4]])
    sources = np.array([[1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]], dtype=np.int16)  # English, then code
    settings = FeatureSettings(position_bins=(4,))
    calls: list[list[str]] = []
    table = feature_spans(tokens, sources, ("en", "code"), POS_TEXTS, settings, pos_sources=["en"], tag_words=_length_tags(calls))
    assert calls == [["The", "dog", "ran"], ["It", "funny"]]
    assert sorted(table.filter(pl.col("feature").str.starts_with("pos:"))["start"].unique().to_list()) == [1, 2, 3, 5, 7]
    assert not feature_spans(tokens, None, (), POS_TEXTS, settings, pos_sources=["en"], tag_words=_length_tags([]))["feature"].str.starts_with("pos:").any()
    every = feature_spans(tokens, None, (), POS_TEXTS, settings, pos_sources="all", tag_words=_length_tags(calls))
    assert sorted(every.filter(pl.col("feature").str.starts_with("pos:"))["start"].unique().to_list()) == [1, 2, 3, 5, 7, 9, 10, 11]
    with pytest.raises(ValueError, match="need a tagger"):
        feature_spans(tokens, sources, ("en", "code"), POS_TEXTS, settings, pos_sources=["en"])


def test_english_tagger_tags_a_sentence_in_context():
    import denckring_en_pos

    from neuron_census.data.part_of_speech import english_tagger

    tag = english_tagger()
    assert tag("The evening walks were long and she walks home".split()) == ["DET", "NOUN", "NOUN", "AUX", "ADV", "CCONJ", "PRON", "VERB", "ADV"]
    upos = {label.partition("|")[0] for label in denckring_en_pos.tagger().classes}  # the model's labels less VerbForm
    assert tag([]) == [] and set(tag("I do n't know what it 's like".split())) <= upos and "|" not in "".join(tag(["walks"]))


def test_feature_families():
    assert [feature_family(f) for f in ("text: digits", "position < 8", "language: lang-fr", "compound: hot dog", "words: w10")] == [
        "text", "position", "language", "compound", "words"
    ]


def test_compound_words_with_a_two_token_first_word():
    tokens = np.array([
        [0, 17, 18, 8, 8, 17, 18, 2, 17, 18],  # hot dog cream | cream | hot dog cat | hot dog<end>
        [0, 8, 18, 8, 17, 8, 18, 17, 18, 8],  # cream, dog cream, hot cream, dog, hot dog cream
        [17, 18, 8, 9, 9, 9, 9, 9, 9, 9],  # "hot dog" would start at BOS: cream unpreceded
        [0, 1, 2, 3, 1, 2, 1, 9, 1, 2],  # The cating | The cat The | The \n | The cat<end>
    ])
    table = compound_spans(tokens, TEXTS, [((17, 18), (8,)), ((1,), (2, 3))])
    assert _labels_by_position(table, "compound: hot dog cream") == {
        (0, 3): True, (0, 4): False, (0, 7): False,
        (1, 1): False, (1, 3): False, (1, 5): False, (1, 9): True,
        (2, 2): False,
    }
    # the second word ends on its last token; at the end, " cat" may still become " cating": unlabelled
    assert _labels_by_position(table, "compound: The cating") == {(3, 3): True, (3, 5): False, (3, 7): False}
    # " cat" at 2 ends the compound " cat| cating" and is a first word not followed by " cating": positive only
    overlap = compound_spans(np.array([[0, 2, 2, 3, 9, 9]]), TEXTS, [((2,), (2, 3))])
    assert _labels_by_position(overlap, "compound: cat cating") == {(0, 3): True}


def _balance_table() -> pl.DataFrame:
    rows = [("a", s, 1, 2, s < 10) for s in range(40)]
    rows += [("b", s, 1, 2, False) for s in range(7)]
    rows += [("c", s, 3, 5, s == 2) for s in range(6)]
    return pl.DataFrame(rows, schema=SPAN_SCHEMA, orient="row")


def test_balanced_spans_counts_share_seed_and_dropped():
    table = _balance_table()
    cases = ((0.5, 8, 4, 4, 1), (0.25, 100, 10, 30, 3), (0.25, 12, 3, 9, 3), (0.5, 100, 10, 10, 1), (0.9, 100, 10, 1, 1))
    for share, limit, n_pos, n_neg, c_neg in cases:
        out, dropped = balanced_spans(table, share, limit, seed=1, min_per_class=1)
        assert dropped == ("b",)
        a = out.filter(pl.col("feature") == "a")
        assert (int(a["label"].sum()), int((~a["label"]).sum())) == (n_pos, n_neg)
        assert a.rows() == sorted(a.rows()) and set(a.rows()) <= set(table.rows())
        c = out.filter(pl.col("feature") == "c")
        assert sorted(c["label"].to_list()) == [False] * c_neg + [True]  # one positive: the share sets the count
    first, _ = balanced_spans(table, 0.5, 8, seed=1, min_per_class=1)
    assert first.equals(balanced_spans(table, 0.5, 8, seed=1, min_per_class=1)[0])
    assert not first.equals(balanced_spans(table, 0.5, 8, seed=2, min_per_class=1)[0])
    before = pl.concat([table.filter(pl.col("feature") == "a").with_columns(feature=pl.lit("0")), table])
    assert balanced_spans(before, 0.5, 8, seed=1, min_per_class=1)[0].filter(pl.col("feature") != "0").equals(first)  # draws per feature
    assert first.schema == pl.Schema(SPAN_SCHEMA)
    few, dropped = balanced_spans(table, 0.5, 100, seed=1, min_per_class=2)  # c: one positive
    assert dropped == ("b", "c") and few.equals(balanced_spans(table, 0.5, 100, seed=1, min_per_class=1)[0].filter(pl.col("feature") == "a"))
    assert balanced_spans(table, 0.5, 100, seed=1, min_per_class=11)[1] == ("a", "b", "c")  # a: 10 positives


def test_feature_spans_bounds_and_order():
    rng = np.random.default_rng(0)
    n_seq, seq_len = 6, 64
    tokens = rng.integers(1, len(TEXTS), size=(n_seq, seq_len))
    tokens[:, 0] = 0
    tokens[:, 10:12] = (17, 18)
    tokens[:3, 12] = 8
    sources = np.repeat(rng.integers(-1, 3, size=(n_seq, 4)), 16, axis=1).astype(np.int16)
    sources[:, 0] = 1
    sources[0, 1:] = 0  # one run from position 1: its span starts at 1 + 25
    table = feature_spans(tokens, sources, ("web", "code", "books"), TEXTS, FeatureSettings(min_span=2), [((17, 18), (8,))])
    assert table.schema == pl.Schema(SPAN_SCHEMA)
    assert table.rows() == sorted(table.rows(), key=lambda r: r[:4])
    assert (table["start"] >= 1).all() and (table["start"] < table["end"]).all() and (table["end"] <= seq_len).all()
    families = {name.split(":")[0].split(" <")[0] for name in table["feature"].unique()}
    assert families == {"text", "position", "source", "compound"}
    assert table.filter(pl.col("feature").str.starts_with("source"))["start"].min() == 26
    assert len(table.filter((pl.col("feature") == "compound: hot dog cream") & pl.col("label"))) >= 3
    without = feature_spans(tokens, None, (), TEXTS, FeatureSettings())
    assert not without["feature"].str.starts_with("source").any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"position_bins": ()}, "at least one bin"),
        ({"position_bins": (4, 1)}, "at least 2"),
        ({"position_bins": (8, 4)}, "increase strictly"),
        ({"skip": -1}, "skip"),
        ({"min_span": 0}, "min_span"),
        ({"positive_share": 1.0}, "positive_share"),
        ({"limit": 1}, "limit"),
        ({"seed": -1}, "seed"),
        ({"min_per_class": 0}, "min_per_class"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FeatureSettings(**kwargs)


def test_bad_shapes_and_values():
    settings = FeatureSettings()
    with pytest.raises(ValueError, match="tokens \\[S, T\\]"):
        text_spans(TOKENS[0], TEXTS)
    with pytest.raises(ValueError, match="token ids in"):
        text_spans(TOKENS + len(TEXTS), TEXTS)
    with pytest.raises(ValueError, match="integer token ids"):
        text_spans(TOKENS.astype(float), TEXTS)
    with pytest.raises(ValueError, match="shaped as tokens"):
        feature_spans(TOKENS, np.zeros((3, 7), dtype=np.int16), ("web",), TEXTS, settings)
    with pytest.raises(ValueError, match="codes in"):
        source_spans(np.full((2, 8), 2, dtype=np.int16), ("web", "code"))
    with pytest.raises(ValueError, match="non-empty"):
        compound_spans(TOKENS, TEXTS, [((1,), ())])
    with pytest.raises(ValueError, match="ids must be in"):
        compound_spans(TOKENS, TEXTS, [((1,), (99,))])
    with pytest.raises(ValueError, match="positive_share"):
        balanced_spans(_balance_table(), positive_share=0.0)
    with pytest.raises(ValueError, match="missing"):
        balanced_spans(_balance_table().drop("label"))
    with pytest.raises(ValueError) as caught:
        feature_spans(TOKENS, np.zeros((3, 7), dtype=np.int16), ("web",), TEXTS, settings)
    assert "\n" not in str(caught.value)
