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
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import torch
from sklearn.cluster import AgglomerativeClustering

if TYPE_CHECKING:  # the adapter's module imports transformers: table jobs need none of it
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


@dataclass(frozen=True)
class LayerProjections:
    """A layer's value-vector projections E v_i = W_U x_i + c, never formed, and their inner products."""

    head: torch.Tensor  # W_U [vocab, d_unembed], float64
    x: torch.Tensor  # [N, d_unembed], float64
    constant: torch.Tensor  # c [vocab], float64
    inner: torch.Tensor  # [N, N]: E v_i . E v_j

    @classmethod
    def of(cls, adapter: FFNAdapter, layer: int, final_norm: bool) -> LayerProjections:
        head = adapter.unembedding().double()
        x, constant = head_inputs(adapter, adapter.value_vectors(layer).to(head.device), final_norm)
        x, constant = x.double(), constant.double().to(head.device)
        reading = head.T @ constant  # W_U^T c
        inner = x @ (head.T @ head) @ x.T
        inner += (x @ reading)[:, None] + (x @ reading)[None, :] + constant @ constant
        return cls(head, x, constant, inner)

    @property
    def norms(self) -> torch.Tensor:
        """[N]: |E v_i|."""
        return self.inner.diagonal().clamp(min=0).sqrt()

    def similarity(self) -> np.ndarray:
        """[N, N] float64: the cosine of every pair of projections (0 with a projection that is 0)."""
        scale = torch.outer(self.norms, self.norms)
        cosine = torch.where(scale > 0, self.inner / scale.clamp(min=1e-300), torch.zeros_like(self.inner))
        return cosine.clamp(-1.0, 1.0).cpu().numpy()

    def cluster_tokens(self, labels: np.ndarray, top_n: int) -> np.ndarray:
        """[clusters, top_n] ids of the tokens each cluster's mean normalised projection scores highest."""
        device = self.head.device
        members = torch.zeros(int(labels.max()) + 1, len(labels), dtype=torch.float64, device=device)
        members[torch.as_tensor(labels, device=device), torch.arange(len(labels), device=device)] = 1.0
        members /= members.sum(dim=1, keepdim=True)
        weights = members / self.norms.clamp(min=1e-30)[None, :]  # mean over members of P_i / |P_i|
        scores = (weights @ self.x) @ self.head.T + weights.sum(dim=1, keepdim=True) * self.constant
        return scores.topk(min(top_n, scores.shape[1]), dim=1).indices.cpu().numpy()


def projection_similarity(adapter: FFNAdapter, layer: int, final_norm: bool) -> np.ndarray:
    """[N, N] float64: the cosine similarity of every pair of the layer's value-vector projections E v_i."""
    return LayerProjections.of(adapter, layer, final_norm).similarity()


def cluster_layer(similarity: np.ndarray, n_clusters: int) -> np.ndarray:
    """Cluster labels [N] by complete linkage on 1 - cosine, renumbered by each cluster's first member."""
    distance = 1.0 - similarity
    np.fill_diagonal(distance, 0.0)
    n_clusters = min(n_clusters, len(distance))
    labels = AgglomerativeClustering(n_clusters=n_clusters, metric="precomputed", linkage="complete").fit_predict(distance)
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))  # old label -> rank of its first member
    return order[labels]


def cluster_tables(
    adapter: FFNAdapter, layers: Sequence[int], token_strings: Sequence[str], *, n_clusters: int, final_norm: bool, top_n: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(one row per (layer, neuron): its `cluster`; one row per (layer, cluster): `size`, `top_ids`,
    `top_tokens`)."""
    from neuron_census.analyses.vocab import display_tokens

    tokens = display_tokens(list(token_strings), adapter.vocab_size)
    assigned, clusters = [], []
    for layer in layers:
        projections = LayerProjections.of(adapter, layer, final_norm)
        labels = cluster_layer(projections.similarity(), n_clusters)
        top = projections.cluster_tokens(labels, top_n)
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
