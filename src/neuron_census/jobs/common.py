"""What every job shares: the model a rule names with its tokenizer, capture settings and threads
(`ModelJob`), reading token shards made with the right tokenizer and stores holding the right accumulators,
and writing tables atomically."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from neuron_census.atomic import atomic_path
from neuron_census.config import schema_defaults

if TYPE_CHECKING:
    import torch

PathLike = str | os.PathLike[str]


def read_shard_for(shard: PathLike, tokenizer: Any, user: str) -> tuple[Any, dict[str, Any]]:
    """Read a token shard and refuse it unless it was made with `tokenizer` (by fingerprint)."""
    from neuron_census.data.corpus import read_token_shard

    tokens, attrs = read_token_shard(shard)
    if attrs["tokenizer_fingerprint"] != tokenizer.fingerprint:
        raise ValueError(
            f"token shard {shard} was made with tokenizer '{attrs['tokenizer']}', not with {user} tokenizer "
            f"'{tokenizer.name}'"
        )
    return tokens, attrs


def store_readers(paths: Sequence[PathLike], names: Sequence[str], user: str) -> list[Any]:
    """The accumulator stores at `paths`, each refused unless it holds accumulators `names`, which `user` needs."""
    from neuron_census.capture.store import StoreReader

    readers = [StoreReader(path) for path in paths]
    for reader in readers:
        reader.require(names, user)
    return readers


def stacked_shards(shards: Sequence[PathLike], tokenizer: Any, user: str) -> Any:
    """Every shard's sequences in one array of the narrowest dtype holding the vocabulary (uint16 up to 65,536
    ids: half of int32), filled a shard at a time, so memory holds the result and one shard, not two copies."""
    from neuron_census.data.corpus import token_shard_shape

    shapes = [token_shard_shape(shard) for shard in shards]
    if len({seq_len for _, seq_len in shapes}) > 1:
        raise ValueError(f"{user}: token shards of different seq_len {sorted({s for _, s in shapes})}")
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.int32
    stacked = np.empty((sum(n for n, _ in shapes), shapes[0][1]), dtype=dtype)
    start = 0
    for shard, (n, _) in zip(shards, shapes):
        tokens = read_shard_for(shard, tokenizer, user)[0]
        if tokens.shape[0] != n:
            raise ValueError(f"token shard {shard} changed while it was read")
        stacked[start : start + n] = tokens
        start += n
    return stacked


def token_tensor(tokens: Any, device: Any) -> Any:
    """int64 token ids on `device`."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).to(device)


def write_parquet(frame: pl.DataFrame, output: PathLike) -> None:
    with atomic_path(output) as tmp:
        frame.write_parquet(tmp, compression="zstd", statistics=False)


def write_for_model(frame: pl.DataFrame, model: str, output: PathLike) -> None:
    """`frame` with a first column `model`, as every per-model table has."""
    write_parquet(frame.select(pl.lit(model).alias("model"), pl.all()), output)


@dataclass(frozen=True)
class ModelJob:
    """The model a job runs, as its rule hands it over: the config's name and resolved spec, the model's
    tokenizer, its capture settings (device, dtype, batch size, placement) and the job's threads."""

    name: str
    spec: Mapping[str, Any]
    tokenizer_name: str
    tokenizer_spec: Mapping[str, Any]
    settings: Mapping[str, Any] = field(default_factory=dict)
    threads: int = 1

    @classmethod
    def from_rule(cls, job: Any, spec: Mapping[str, Any] | None = None) -> ModelJob:
        """From a Snakemake job of wildcard `model` and params `model` (or `spec`), `tokenizer_name`,
        `tokenizer` and, where it reads the model's capture settings, `settings`."""
        params = job.params
        return cls(
            job.wildcards.model, params.model if spec is None else spec, params.tokenizer_name, params.tokenizer,
            getattr(params, "settings", {}), int(job.threads),
        )

    @property
    def capture(self) -> dict[str, Any]:
        """The capture settings with the schema's defaults filled in."""
        return {**schema_defaults("capture"), **self.settings}

    @property
    def batch_size(self) -> int:
        """Sequences per forward pass."""
        return int(self.capture["batch_size"])

    def load(self, placement: Any = None, offload_dir: Path | None = None) -> tuple[Any, Any, torch.device, torch.dtype]:
        """What every job that runs the model starts with: threads, tokenizer, model, device and dtype (`auto`:
        CUDA with bfloat16 when present, else CPU with float32)."""
        import torch

        from neuron_census.data.tokenization import load_tokenizer
        from neuron_census.models.loading import load_model

        torch.set_num_threads(max(1, self.threads))
        tokenizer = load_tokenizer(self.tokenizer_name, self.tokenizer_spec)
        name, dtype_name = self.capture["device"], self.capture["dtype"]
        device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"capture.device '{name}' asks for CUDA but no CUDA device is available")
        auto = torch.bfloat16 if device.type == "cuda" else torch.float32
        dtype = auto if dtype_name == "auto" else getattr(torch, dtype_name)  # the schema's enum of torch dtype names
        loaded = load_model(self.name, self.spec, device=device, dtype=dtype, placement=placement, offload_dir=offload_dir)
        return tokenizer, loaded, device, dtype

    def read_shard(self, shard: PathLike, tokenizer: Any) -> tuple[Any, dict[str, Any]]:
        """A token shard, refused unless made with the model's tokenizer."""
        return read_shard_for(shard, tokenizer, f"model '{self.name}'")
