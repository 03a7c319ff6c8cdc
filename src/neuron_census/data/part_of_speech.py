"""English part-of-speech tags for sparse probing's `pos` features.

The tagger is denckring-en-pos 0.6.0 (a PyPI dependency): an averaged perceptron over Honnibal's feature set,
trained on Universal Dependencies English-EWT v2.18 with punctuation dropped, UPOS accuracy 0.934 on EWT's
test split. Its weights are a JSON table read from the package (nothing downloaded, nothing unpickled). The
paper probes the treebank's gold tags; no treebank ships offline, so these tags are silver: the tagger's
estimate on whatever text the study reads."""

from __future__ import annotations

from collections.abc import Callable, Sequence

TagWords = Callable[[Sequence[str]], list[str]]


def english_tagger() -> TagWords:
    """A function from one sentence's words (letters and internal apostrophes, in order) to their UPOS tags."""
    import denckring_en_pos

    model = denckring_en_pos.tagger()

    def tag(words: Sequence[str]) -> list[str]:
        return [label.partition("|")[0] for label in model.tag(list(words))] if words else []

    return tag
