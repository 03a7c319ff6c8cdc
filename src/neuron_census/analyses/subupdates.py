"""FFN sub-updates in vocabulary space (Geva et al. 2022): an FFN adds sum_i m_i v_i to the residual stream,
v_i its value vectors, m_i the neurons' activations. Read through the logit lens, each layer's FFN moves the
prediction; its dominant sub-updates (largest m_i |v_i|) promote the final prediction or push down the
candidates it beats.

Predictions: sequences of the study's token shards, each cut at a seeded random position p (the model sees
tokens 0..p and predicts the next). One forward pass over a whole sequence gives, at position p, exactly
the states of that prefix (attention is causal), so a batch of sequences is one forward pass.

Per prediction and layer l, with W_U ln_f the model's own head (final norm included):
- before = the residual stream entering the FFN's sum (the layer's output minus the FFN's output, also for
  parallel attention), after = the layer's output; their top-1 tokens and the rank of the final prediction
  w (the top-1 after the last layer) in each (0 = top);
- saturation layer: the first l whose top-1 after the FFN is w at l and at every later layer;
- eliminated candidates: the tokens ranked above w before the FFN at l (at most `candidates` of them);
- dominant sub-updates: the `top` neurons by |m_i| |v_i| (`scoring: absolute`) or m_i |v_i| (`signed`),
  and `random` neurons of the same layer drawn with the study's seed, the baseline.

A sub-update m_i v_i promotes w when w is among the `vocab.top_n` tokens it raises most: the top tokens of
E v_i for m_i > 0, its bottom tokens for m_i < 0 (E v_i as the vocabulary projection table reads it); it
eliminates a candidate when one is among the tokens it lowers most. The paper's code leaves this test out
of its release; this is the reading of its text.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch

from neuron_census.config import default_field, schema_defaults

if TYPE_CHECKING:  # the adapter's module imports transformers: table jobs need none of it
    from neuron_census.models.adapters import FFNAdapter


SCORINGS = ("absolute", "signed")
_default = partial(default_field, schema_defaults("$defs/subupdate_study"))


@dataclass(frozen=True)
class SubupdateSettings:
    predictions: int = _default("predictions")  # sequences of the study's shards, one prediction each
    min_position: int = _default("min_position")  # the earliest cut: the model has seen at least this many tokens after BOS
    top: int = _default("top")  # dominant sub-updates per prediction and layer
    random: int = _default("random")  # random sub-updates of the same layer per prediction, the baseline
    candidates: int = _default("candidates")  # eliminated candidates kept per prediction and layer
    scoring: str = _default("scoring")
    seed: int = _default("seed")

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"sub-update scoring must be one of {SCORINGS}, got {self.scoring!r}")


def cut_positions(n_sequences: int, seq_len: int, settings: SubupdateSettings) -> np.ndarray:
    """The position each prediction's sequence is cut at: seeded, uniform over min_position..seq_len-1."""
    low = min(max(settings.min_position, 1), seq_len - 1)
    return np.random.default_rng([settings.seed, 0]).integers(low, seq_len, size=n_sequences)


def random_neurons(n_predictions: int, n_layers: int, n_neurons: int, settings: SubupdateSettings) -> np.ndarray:
    """[P, L, random]: the baseline's neurons, drawn without repeats per (prediction, layer) with the seed,
    whatever the batch size."""
    rng = np.random.default_rng([settings.seed, 1])
    k = min(settings.random, n_neurons)
    drawn = [rng.choice(n_neurons, size=k, replace=False) for _ in range(n_predictions * n_layers)]
    return np.asarray(drawn, dtype=np.int64).reshape(n_predictions, n_layers, k)


def ranks(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[P]: how many tokens score strictly higher than each row's target (0 = the top token)."""
    chosen = logits.gather(1, targets[:, None])
    return (logits > chosen).sum(dim=1)


def saturation_layers(top_after: np.ndarray) -> np.ndarray:
    """[P]: the first layer from which every layer's top-1 after the FFN is the final top-1 ([P, L] in)."""
    final = top_after[:, -1:]
    agrees = top_after == final
    trailing = np.cumprod(agrees[:, ::-1], axis=1).sum(axis=1)  # layers from the last on that agree
    return top_after.shape[1] - trailing


@dataclass(frozen=True)
class LensPass:
    """What one pass over the predictions gives: the logit lens per (prediction, layer), the chosen
    sub-updates per (prediction, layer, neuron), and at each cut the residual stream entering every layer's
    FFN sum and the FFN's output, [P, L, d] float32 (what early-exit probes read)."""

    lens: pl.DataFrame
    subupdates: pl.DataFrame
    residual: np.ndarray
    ffn: np.ndarray


def lens_pass(
    model: torch.nn.Module, adapter: FFNAdapter, tokens: torch.Tensor, positions: np.ndarray, settings: SubupdateSettings, *,
    batch_size: int,
) -> LensPass:
    """Run the model over `tokens` [S, T] and read, at each sequence's cut position, every layer's logit
    lens before and after the FFN and its dominant and random sub-updates (module docstring)."""
    if getattr(model.config, "do_layer_norm_before", True) is False:
        raise ValueError(f"model '{adapter.name}': post-LN OPT has no residual stream before its FFN's sum to read")
    n_layers = adapter.n_layers
    norms = [adapter.value_vectors(layer).norm(dim=1) for layer in range(n_layers)]
    baseline = random_neurons(len(tokens), n_layers, adapter.n_neurons, settings)
    seen: dict[str, dict[int, torch.Tensor]] = {"acts": {}, "ffn": {}, "after": {}}

    def keep(kind: str, layer: int, read: Any) -> Any:
        def hook(_module: torch.nn.Module, args: tuple, output: Any) -> None:
            seen[kind][layer] = read(args, output).detach()

        return hook

    hooks = []
    for layer in range(n_layers):
        projection = adapter.neuron_input_module(layer)
        hooks.append(projection.register_forward_hook(keep("acts", layer, lambda args, _out: args[0])))
        hooks.append(projection.register_forward_hook(keep("ffn", layer, lambda _args, out: out)))
        hooks.append(adapter.decoder_layers()[layer].register_forward_hook(keep("after", layer, lambda _args, out: out[0] if isinstance(out, tuple) else out)))
    lens_parts: list[pl.DataFrame] = [pl.DataFrame(schema=LENS_SCHEMA)]
    sub_parts: list[pl.DataFrame] = [pl.DataFrame(schema=SUBUPDATE_SCHEMA)]
    d_model = adapter.value_vectors(0).shape[1]
    residual = np.zeros((len(tokens), n_layers, d_model), dtype=np.float32)
    ffn = np.zeros_like(residual)
    device = tokens.device
    try:
        with torch.no_grad():
            for start in range(0, len(tokens), batch_size):
                batch = tokens[start : start + batch_size]
                cut = torch.as_tensor(positions[start : start + len(batch)], device=device)
                model(input_ids=batch, use_cache=False)
                rows = torch.arange(len(batch), device=device)

                def at_cut(x: torch.Tensor) -> torch.Tensor:
                    return x.reshape(len(batch), batch.shape[1], -1)[rows, cut].float()

                after = [at_cut(seen["after"][layer]) for layer in range(n_layers)]
                written = [at_cut(seen["ffn"][layer]) for layer in range(n_layers)]
                before = [after[layer] - written[layer] for layer in range(n_layers)]
                residual[start : start + len(batch)] = torch.stack(before, dim=1).cpu().numpy()
                ffn[start : start + len(batch)] = torch.stack(written, dim=1).cpu().numpy()
                final = adapter.project_to_vocab(after[-1], apply_final_norm=True).argmax(dim=1)
                for layer in range(n_layers):
                    logits_before = adapter.project_to_vocab(before[layer], apply_final_norm=True)
                    logits_after = adapter.project_to_vocab(after[layer], apply_final_norm=True)
                    rank_before, rank_after = ranks(logits_before, final), ranks(logits_after, final)
                    order = logits_before.topk(settings.candidates, dim=1).indices
                    acts = at_cut(seen["acts"][layer])
                    # the dominant sub-updates: the `top` neurons by |m| |v| or m |v|
                    weighted = acts * norms[layer].to(acts.device)
                    weighted = weighted if settings.scoring == "signed" else weighted.abs()
                    neurons = weighted.topk(min(settings.top, acts.shape[1]), dim=1).indices
                    drawn = torch.as_tensor(baseline[start : start + len(batch), layer])
                    predictions = np.arange(start, start + len(batch))
                    above = rank_before.clamp(max=settings.candidates).tolist()
                    lens_parts.append(pl.DataFrame({
                        "prediction": predictions, "position": cut.cpu().numpy(), "layer": np.full(len(batch), layer),
                        "final_token": final.cpu().numpy(), "top_before": logits_before.argmax(dim=1).cpu().numpy(),
                        "top_after": logits_after.argmax(dim=1).cpu().numpy(), "rank_before": rank_before.cpu().numpy(),
                        "rank_after": rank_after.cpu().numpy(), "candidates": [ids[:n] for ids, n in zip(order.tolist(), above)],
                    }, schema=LENS_SCHEMA))
                    for kind, chosen in (("dominant", neurons), ("random", drawn.to(device))):
                        m = acts.gather(1, chosen)
                        sub_parts.append(pl.DataFrame({
                            "prediction": np.repeat(predictions, chosen.shape[1]), "layer": np.full(chosen.numel(), layer), "kind": kind,
                            "place": np.tile(np.arange(chosen.shape[1]), len(batch)), "neuron": chosen.reshape(-1).cpu().numpy(),
                            "activation": m.reshape(-1).double().cpu().numpy(),
                            "score": (m * norms[layer].to(device)[chosen]).reshape(-1).double().cpu().numpy(),
                        }, schema=SUBUPDATE_SCHEMA))
    finally:
        for hook in hooks:
            hook.remove()
    lens = pl.concat(lens_parts).sort("prediction", "layer")
    top_after = lens["top_after"].to_numpy().reshape(-1, n_layers)
    saturation = pl.DataFrame({"prediction": np.unique(lens["prediction"].to_numpy()), "saturation_layer": saturation_layers(top_after)})
    subupdates = pl.concat(sub_parts).sort("prediction", "layer", "kind", "place")
    return LensPass(lens.join(saturation, on="prediction", how="left", maintain_order="left"), subupdates, residual, ffn)


LENS_SCHEMA = {
    "prediction": pl.Int64, "position": pl.Int64, "layer": pl.Int64, "final_token": pl.Int64, "top_before": pl.Int64,
    "top_after": pl.Int64, "rank_before": pl.Int64, "rank_after": pl.Int64, "candidates": pl.List(pl.Int64),
}
SUBUPDATE_SCHEMA = {
    "prediction": pl.Int64, "layer": pl.Int64, "kind": pl.Utf8, "place": pl.Int64, "neuron": pl.Int64,
    "activation": pl.Float64, "score": pl.Float64,
}


def label_subupdates(subupdates: pl.DataFrame, lens: pl.DataFrame, vocab: pl.DataFrame) -> pl.DataFrame:
    """`subupdates` with `promotes` (the final prediction is among the tokens the sub-update raises most)
    and `eliminates` (a candidate of its prediction and layer is among those it lowers most): the value
    vector's top tokens in `vocab` when its activation is positive, its bottom tokens when negative. A
    sub-update that writes nothing (a zero activation or value vector, score 0) does neither."""
    values = vocab.select("layer", "neuron", top=pl.col("vocab_top_ids"), bottom=pl.col("vocab_bottom_ids"))
    joined = subupdates.join(lens.select("prediction", "layer", "final_token", "candidates"), on=["prediction", "layer"], how="left").join(
        values, on=["layer", "neuron"], how="left"
    )
    raised = pl.when(pl.col("score") > 0).then(pl.col("top")).when(pl.col("score") < 0).then(pl.col("bottom"))
    lowered = pl.when(pl.col("score") > 0).then(pl.col("bottom")).when(pl.col("score") < 0).then(pl.col("top"))
    return joined.with_columns(
        promotes=raised.list.contains(pl.col("final_token")).fill_null(False),
        eliminates=(lowered.list.set_intersection(pl.col("candidates")).list.len() > 0).fill_null(False),
    ).drop("top", "bottom", "final_token", "candidates")


def layer_shares(labelled: pl.DataFrame) -> pl.DataFrame:
    """Per layer and kind (dominant, random): the share of sub-updates that promote the prediction and the
    share that eliminate a candidate."""
    return (
        labelled.group_by("layer", "kind")
        .agg(n=pl.len(), promotes=pl.col("promotes").mean(), eliminates=pl.col("eliminates").mean())
        .sort("layer", "kind")
    )

