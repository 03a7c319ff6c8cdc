"""Concepts: value vectors clustered by their projections to the vocabulary (Geva et al. 2022, Sec. 3.2),
agglomerative with complete linkage on the cosine distance between projections E v_i.

The projections need not be formed: E v = W_U x + c, with x the value vector as the head reads it (through
the final norm's normalisation where `final_norm` says so, and OPT-350m's project_out) and c the head's
constant (the final norm's bias through W_U, and the head's bias). Their inner products are then
x_i^T (W_U^T W_U) x_j + x_i . (W_U^T c) + x_j . (W_U^T c) + c . c: d x d work instead of an N x vocab matrix.

Clusters are formed per layer: the reference clusters every layer's vectors together, whose distance matrix
(GPT-2 medium: 98k^2 entries, 38 GB) does not fit a job; the early-exit rule compares cluster ids within a
layer only. A value vector whose projection is 0 (a neuron that writes nothing) sits at distance 1 from all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl
import torch
from sklearn.cluster import AgglomerativeClustering

from neuron_census.models.adapters import FFNAdapter


@torch.no_grad()
def head_inputs(adapter: FFNAdapter, vectors: torch.Tensor, final_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [k, d_unembed], c [vocab]) with project_to_vocab(v) = x W_U^T + c for each row v of `vectors` [k, d]."""
    zero = torch.zeros(1, adapter.d_model, device=vectors.device)
    constant = adapter.project_to_vocab(zero, apply_final_norm=final_norm)[0]
    x = vectors.float()
    if final_norm:
        x = adapter.final_norm_f32(x) - adapter.final_norm_f32(zero)
    return adapter.unembedding_space(x), constant


def projection_similarity(adapter: FFNAdapter, layer: int, final_norm: bool) -> np.ndarray:
    """[N, N] float64: the cosine similarity of every pair of the layer's value-vector projections E v_i."""
    head = adapter.unembedding().double()
    x, constant = head_inputs(adapter, adapter.value_vectors(layer).to(head.device), final_norm)
    x, constant = x.double(), constant.double().to(head.device)
    reading = head.T @ constant  # W_U^T c
    inner = x @ (head.T @ head) @ x.T
    inner += (x @ reading)[:, None] + (x @ reading)[None, :] + constant @ constant
    norms = inner.diagonal().clamp(min=0).sqrt()
    scale = torch.outer(norms, norms)
    cosine = torch.where(scale > 0, inner / scale.clamp(min=1e-300), torch.zeros_like(inner))
    return cosine.clamp(-1.0, 1.0).cpu().numpy()


def cluster_layer(similarity: np.ndarray, n_clusters: int) -> np.ndarray:
    """Cluster labels [N] by complete linkage on 1 - cosine, renumbered by each cluster's first member."""
    distance = 1.0 - similarity
    np.fill_diagonal(distance, 0.0)
    n_clusters = min(n_clusters, len(distance))
    labels = AgglomerativeClustering(n_clusters=n_clusters, metric="precomputed", linkage="complete").fit_predict(distance)
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))  # old label -> rank of its first member
    return order[labels]


def cluster_tokens(adapter: FFNAdapter, layer: int, labels: np.ndarray, final_norm: bool, top_n: int) -> np.ndarray:
    """[clusters, top_n] ids of the tokens the cluster's mean normalised projection scores highest."""
    head = adapter.unembedding().float()
    x, constant = head_inputs(adapter, adapter.value_vectors(layer).to(head.device), final_norm)
    constant = constant.to(head.device)
    norms = (x @ head.T + constant).norm(dim=1).clamp(min=1e-30)
    members = torch.zeros(int(labels.max()) + 1, len(labels), dtype=torch.float32, device=head.device)
    members[torch.as_tensor(labels, device=head.device), torch.arange(len(labels), device=head.device)] = 1.0
    members /= members.sum(dim=1, keepdim=True)
    weights = members / norms[None, :]  # mean over members of P_i / |P_i|
    scores = (weights @ x) @ head.T + weights.sum(dim=1, keepdim=True) * constant
    return scores.topk(min(top_n, scores.shape[1]), dim=1).indices.cpu().numpy()


def cluster_tables(
    adapter: FFNAdapter, layers: Sequence[int], token_strings: Sequence[str], *, n_clusters: int, final_norm: bool, top_n: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(one row per (layer, neuron): its `cluster`; one row per (layer, cluster): `size`, `top_ids`,
    `top_tokens`)."""
    from neuron_census.analyses.vocab import display_tokens

    tokens = display_tokens(list(token_strings), adapter.vocab_size)
    assigned, clusters = [], []
    for layer in layers:
        labels = cluster_layer(projection_similarity(adapter, layer, final_norm), n_clusters)
        top = cluster_tokens(adapter, layer, labels, final_norm, top_n)
        assigned.append(pl.DataFrame({"layer": np.full(len(labels), layer), "neuron": np.arange(len(labels)), "cluster": labels}))
        clusters.append(
            pl.DataFrame(
                {
                    "layer": np.full(len(top), layer),
                    "cluster": np.arange(len(top)),
                    "size": np.bincount(labels, minlength=len(top)),
                    "top_ids": top.tolist(),
                    "top_tokens": tokens[top].tolist(),
                    "final_norm": np.full(len(top), final_norm),
                },
                schema_overrides={"top_ids": pl.List(pl.Int64), "top_tokens": pl.List(pl.Utf8)},
            )
        )
    return pl.concat(assigned).cast({"layer": pl.Int64, "neuron": pl.Int64, "cluster": pl.Int64}), pl.concat(clusters).cast(
        {"layer": pl.Int64, "cluster": pl.Int64, "size": pl.Int64}
    )
