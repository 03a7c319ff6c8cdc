"""Train language models from scratch: OPT (with and without positional embeddings) and GPT-2 architectures.

Voita et al. (2023, Sec. 5.4) compare positional neurons of two models trained identically except that one
has no positional embeddings ("NoPos"). Both are `OPTForCausalLM`: ReLU FFN, pre-LayerNorm, learned absolute
positions, tied input/output embeddings. The NoPos model is the same class with its position-embedding table
set to zero and frozen for the whole of training, so positions add nothing to the residual stream while every
checkpoint stays an ordinary OPT folder that `AutoModelForCausalLM.from_pretrained` loads like any other.
Gurnee et al. (2024) compare GPT-2 models that differ only in their seed: `architecture: gpt2` trains
`GPT2LMHeadModel` (GELU FFN) the same way.

Layout of `out_dir`:
    step-{N}/          one Hugging Face model folder per checkpoint (config.json, model.safetensors, tokenizer files)
    resume/            the latest training state (weights, AdamW moments, RNG, step; safetensors + json),
                       saved at every checkpoint and every `resume_every` steps
    train_log.jsonl    one row per logged step: step, loss, lr, tokens_seen, seconds
    train_state.json   a summary, written when the last step is done

Training is deterministic on CPU for a fixed thread count: the same config and tokens give the same weights,
and a run resumed from `resume/` reaches the same weights as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils.deterministic
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import BatchSampler, RandomSampler
from tqdm.auto import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from neuron_census.atomic import atomic_path
from neuron_census.config import default_field, schema_defaults
from neuron_census.testing.failpoints import failpoint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                   "merges.txt", "tokenizer.model")
IGNORE_INDEX = -100
SAVE_SCHEDULE = ("checkpoints", "resume_every")  # may change between a run and its resumption
# settings younger than some saved resume states: a state without them trained with their defaults
LATER_SETTINGS = ("micro_batches", "lr_schedule")
MAX_LOG_ROWS = 1000  # long runs log the mean loss of every steps // MAX_LOG_ROWS steps

_default = functools.partial(default_field, schema_defaults("$defs/train_run"))


@dataclass(frozen=True)
class TrainConfig:
    """Architecture, optimisation and checkpoint schedule of one training run.

    `positions=False` trains the NoPos variant. `dtype="auto"` means bf16 autocast on CUDA and fp32 on CPU;
    master weights and optimizer state are always fp32. `micro_batches` splits each update's `batch_size`
    sequences into that many forward/backward passes whose gradients add up (the same update, in less
    memory: OPT's 0.5M-token batches on one GPU).
    """

    architecture: str = _default("architecture")  # "opt" (ReLU) or "gpt2" (GELU; learned positions and tied embeddings, as both)
    d_model: int = _default("d_model")
    n_layers: int = _default("n_layers")
    n_heads: int = _default("n_heads")
    ffn_dim: int = _default("ffn_dim")
    max_positions: int = _default("max_positions")
    positions: bool = _default("positions")
    steps: int = 600
    batch_size: int = _default("batch_size")
    micro_batches: int = 1
    lr: float = _default("lr")
    lr_schedule: str = "cosine"  # after warm-up, down to 10% of `lr`: "cosine" or "linear" (OPT's own)
    warmup_steps: int = _default("warmup_steps")
    weight_decay: float = _default("weight_decay")
    adam_betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = _default("grad_clip")
    dropout: float = _default("dropout")
    seed: int = 0
    checkpoints: tuple[int, ...] = (150, 300, 600)
    dtype: str = "auto"
    resume_every: int = _default("resume_every")  # steps between resume states (besides checkpoints); 0: at checkpoints only

    def __post_init__(self) -> None:
        """What the config schema cannot say (it checks types, ranges, choices and the last checkpoint)."""
        if self.batch_size % self.micro_batches:
            raise ValueError(f"micro_batches={self.micro_batches} must divide batch_size={self.batch_size}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.architecture == "gpt2" and not self.positions:
            raise ValueError("positions=false (NoPos) is an OPT variant; the gpt2 architecture keeps its positions")
        if not self.warmup_steps < self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps), got {self.warmup_steps}")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _trajectory(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of a config's JSON that decide the weights at every step: all but the save schedule.
    Settings a saved state predates read as their defaults, which is what that run trained with."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in LATER_SETTINGS}
    return {k: v for k, v in {**defaults, **config}.items() if k not in SAVE_SCHEDULE}


def model_config(cfg: TrainConfig, vocab_size: int, *, bos_id: int, eos_id: int, pad_id: int) -> PretrainedConfig:
    """The Hugging Face config of the run's architecture at the size given by `cfg`. OPT: ReLU, pre-LN,
    learned positions, biases; GPT-2: GELU (`gelu_new`), pre-LN, learned positions. Both tie the input and
    output embeddings; the configs' defaults give the rest (init std 0.02, no layer drop)."""
    common = {"vocab_size": vocab_size, "tie_word_embeddings": True, "bos_token_id": bos_id, "eos_token_id": eos_id,
              "pad_token_id": pad_id}
    if cfg.architecture == "gpt2":
        return GPT2Config(
            n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.ffn_dim, n_positions=cfg.max_positions,
            activation_function="gelu_new", resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            **common,
        )
    return OPTConfig(
        hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, ffn_dim=cfg.ffn_dim,
        max_position_embeddings=cfg.max_positions, do_layer_norm_before=True, activation_function="relu",
        dropout=cfg.dropout, **common,
    )


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of update `step` (0-based): linear warmup, then cosine or linear decay to 10% of `cfg.lr`.

    A pure function of the step, so the schedule needs no state of its own to resume.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - 0.9 * progress)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def build_model(cfg: TrainConfig, config: PretrainedConfig) -> PreTrainedModel:
    """A freshly initialised model (seeded); for NoPos, with a zero, frozen position table."""
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(config) if isinstance(config, GPT2Config) else OPTForCausalLM(config)
    if not cfg.positions:
        table = model.model.decoder.embed_positions.weight
        with torch.no_grad():
            table.zero_()
        table.requires_grad_(False)
    return model


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only (not on biases or LayerNorm)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr_at(0, cfg), betas=cfg.adam_betas, fused=device.type == "cuda" or None)


@contextlib.contextmanager
def deterministic_cpu(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on CPU (where they cost nothing); the previous global settings are restored.

    Fresh tensors are not NaN-filled, as deterministic mode does by default to expose reads of uninitialised
    memory: no kernel here reads them, and the fills cost 5% of a CPU training step."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fills = torch.utils.deterministic.fill_uninitialized_memory
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = fills


def next_token_loss(model: torch.nn.Module, batch: torch.Tensor, cfg: TrainConfig, device: torch.device) -> torch.Tensor:
    """Mean cross-entropy of predicting token t+1 from tokens <= t, in fp32, under bf16 autocast where asked
    for (`auto` asks for it on CUDA only).

    The targets are shifted and the last position ignored instead of slicing the logits, which on CPU
    saves copying (and, in backward, zero-filling) the largest tensor of the step.
    """
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and device.type == "cuda")
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        logits = model(input_ids=batch, use_cache=False).logits
    targets = F.pad(batch[:, 1:], (0, 1), value=IGNORE_INDEX)
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)


def save_checkpoint(model: PreTrainedModel, path: Path, tokenizer_dir: Path | None) -> None:
    """Write one Hugging Face model folder (weights in safetensors, plus the tokenizer files) atomically.

    transformers' per-save progress bar is hidden: it would interleave with the training bar."""
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with atomic_path(path) as tmp:
            model.save_pretrained(tmp)
            if tokenizer_dir is not None:
                for name in TOKENIZER_FILES:
                    if (tokenizer_dir / name).is_file():
                        shutil.copyfile(tokenizer_dir / name, tmp / name)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def save_resume_state(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, step: int, seconds: float, cfg: TrainConfig,
    log: list[dict[str, Any]], pending_loss: tuple[float, int],
) -> None:
    """Everything needed to continue training bit for bit: tensors in safetensors, the rest in json.

    Optimizer moments are keyed by parameter name; `pending_loss` is the loss sum and step count since the
    last log row, so a state saved between two log rows resumes to the same logged means.
    """
    names = {id(p): name for name, p in model.named_parameters()}
    weights = {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()}
    opt_state = optimizer.state_dict()
    param_names = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    moments = {
        f"{param_names[index]}::{key}": value.detach().cpu().contiguous()
        for index, state in opt_state["state"].items()
        for key, value in state.items()
    }
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    meta = {
        "step": step, "seconds": seconds, "config": cfg.to_json(), "param_names": param_names,
        "param_groups": [{k: v for k, v in group.items() if k != "params"} for group in opt_state["param_groups"]],
        "pending_loss": list(pending_loss),
    }
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        save_file(weights, str(tmp / "model.safetensors"))
        save_file(moments, str(tmp / "optimizer.safetensors"))
        save_file(rng, str(tmp / "rng.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "train_log.jsonl").write_text(_jsonl(log))


def load_resume_state(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> tuple[int, float, list[dict[str, Any]], tuple[float, int]]:
    """Restore what `save_resume_state` wrote; returns (step, seconds, log rows, pending loss)."""
    meta = json.loads((path / "state.json").read_text())
    saved, current = _trajectory(meta["config"]), _trajectory(cfg.to_json())
    if saved != current:
        changed = sorted(k for k in current if saved.get(k) != current[k])
        raise ValueError(f"resume state in {path} was saved with a different config (differs in {changed})")
    weights = load_file(str(path / "model.safetensors"))
    params = dict(model.named_parameters())
    if set(weights) != set(params):
        raise ValueError(f"resume state in {path} does not match the model's parameters")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name])
    by_name: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in load_file(str(path / "optimizer.safetensors")).items():
        name, entry = key.split("::", 1)
        by_name.setdefault(name, {})[entry] = value
    state = {index: by_name[name] for index, name in enumerate(meta["param_names"]) if name in by_name}
    groups = [
        {**saved_group, "betas": tuple(saved_group["betas"]), "params": group["params"]}
        for saved_group, group in zip(meta["param_groups"], optimizer.state_dict()["param_groups"], strict=True)
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    cuda_states = [rng[f"cuda.{i}"] for i in range(sum(key.startswith("cuda.") for key in rng))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    log = [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines() if line]
    loss_sum, loss_count = meta.get("pending_loss", (0.0, 0))
    return int(meta["step"]), float(meta["seconds"]), log, (float(loss_sum), int(loss_count))


def resumable(out_dir: Path, cfg: TrainConfig) -> bool:
    """Whether `out_dir` holds a resume state that `cfg` can continue (same trajectory settings)."""
    try:
        saved = json.loads((Path(out_dir) / "resume" / "state.json").read_text())["config"]
    except (OSError, ValueError, KeyError):  # no state, or not one this version wrote
        return False
    return _trajectory(saved) == _trajectory(cfg.to_json())


class TrainingStopped(InterruptedError):
    """SIGTERM (a cluster's time limit or preemption) stopped training after saving a resume state."""


@contextlib.contextmanager
def stop_requests() -> Iterator[list[str]]:
    """Turn SIGTERM into a request that the training loop honours after the current step.

    Clusters send SIGTERM some time before SIGKILL (SLURM's KillWait, 30 s by default): enough to save.
    Only the main thread can take signals; elsewhere nothing changes.
    """
    requested: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, _frame: requested.append(signal.Signals(signum).name))
    try:
        yield requested
    finally:
        signal.signal(signal.SIGTERM, previous)


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], batch: torch.Tensor, *,
    lr: float, cfg: TrainConfig, device: torch.device,
) -> torch.Tensor:
    """One AdamW update at learning rate `lr` with gradient clipping; returns the (detached) loss.

    With `cfg.micro_batches` > 1 the batch's equal parts run forward and backward one after another; each
    part's mean loss is scaled by 1/parts, so the gradients add up to those of the whole batch's mean."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss = torch.zeros((), device=batch.device)
    for part in batch.chunk(cfg.micro_batches):
        part_loss = next_token_loss(model, part, cfg, device) / cfg.micro_batches
        part_loss.backward()
        loss += part_loss.detach()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    optimizer.step()
    return loss


def train_opt(
    tokens: np.ndarray, cfg: TrainConfig, out_dir: Path, *, vocab_size: int, bos_id: int, eos_id: int, pad_id: int,
    tokenizer_dir: Path | None = None, progress: bool = True, device: str | torch.device | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Train one model on packed, BOS-prefixed `tokens` [n_sequences, seq_len]; returns the log rows.

    Continues from `out_dir/resume/` when it holds a state of the same run. `stop_after` (a checkpoint step)
    ends this call early with the resume state saved, for time-limited jobs; `device` defaults to CUDA when
    present. `train_state.json` is written only once the last step is done.
    """
    if tokens.shape[1] > cfg.max_positions:  # token shards are checked for the rest (2-D, int32)
        raise ValueError(f"seq_len {tokens.shape[1]} exceeds max_positions {cfg.max_positions}")
    if stop_after is not None and stop_after not in cfg.checkpoints:
        raise ValueError(f"stop_after={stop_after} is not one of the checkpoints {list(cfg.checkpoints)}")
    out_dir = Path(out_dir)
    if device is None or str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    n_rows, seq_len = tokens.shape
    model = build_model(cfg, model_config(cfg, vocab_size, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)).to(device)
    optimizer = make_optimizer(model, cfg, device)
    step, elapsed, log, pending = 0, 0.0, [], (0.0, 0)
    if (out_dir / "resume" / "state.json").is_file():
        step, elapsed, log, pending = load_resume_state(out_dir / "resume", model, optimizer, cfg)
        print(f"train: resuming from step {step} of {cfg.steps} ({out_dir / 'resume'})", file=sys.stderr)
    last = cfg.steps if stop_after is None else stop_after
    saved = step
    # Epochs of permutations drawn in order from one seeded generator: a step's batch depends only on the
    # seed and the step, so a resumed run replays the permutations up to its step and continues from there.
    generator = torch.Generator().manual_seed(cfg.seed)
    rows = RandomSampler(range(n_rows), num_samples=cfg.steps * cfg.batch_size, generator=generator)
    batches = itertools.islice(BatchSampler(rows, cfg.batch_size, drop_last=False), step, None)
    log_every = max(1, cfg.steps // MAX_LOG_ROWS)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_sum, loss_count = torch.tensor(pending[0], device=device), pending[1]
    started = time.perf_counter() - elapsed
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=f"train ({'pos' if cfg.positions else 'nopos'})")

    def save_resume() -> None:
        save_resume_state(
            out_dir / "resume", model, optimizer, step=step, seconds=time.perf_counter() - started, cfg=cfg, log=log,
            pending_loss=(float(loss_sum), loss_count),
        )

    model.train()
    with deterministic_cpu(device), bar, stop_requests() as stop:
        while step < last:
            lr = lr_at(step, cfg)
            batch_rows = next(batches)
            # only the batch's rows are read, so `tokens` may be a memory map of any size
            batch = torch.from_numpy(np.ascontiguousarray(tokens[batch_rows])).long()
            if int(batch.max()) >= vocab_size or int(batch.min()) < 0:
                raise ValueError(f"token ids out of range [0, {vocab_size}) in rows {batch_rows}")
            batch = batch.to(device, non_blocking=True)
            loss = train_step(model, optimizer, params, batch, lr=lr, cfg=cfg, device=device)
            step += 1
            loss_sum += loss
            loss_count += 1
            if step % log_every == 0 or step in cfg.checkpoints:
                mean = float(loss_sum) / loss_count
                tokens_seen = step * cfg.batch_size * seq_len
                seconds = round(time.perf_counter() - started, 3)
                log.append({"step": step, "loss": mean, "lr": lr, "tokens_seen": tokens_seen, "seconds": seconds})
                bar.set_postfix(loss=f"{mean:.3f}")
                loss_sum.zero_()
                loss_count = 0
            bar.update(1)
            if step in cfg.checkpoints:  # the HF folder first, then the resume state and log that point past it
                model.eval()
                save_checkpoint(model, out_dir / f"step-{step}", tokenizer_dir)
                model.train()
                save_resume()
                with atomic_path(out_dir / "train_log.jsonl") as tmp:
                    tmp.write_text(_jsonl(log))
                saved = step
            failpoint("train-step", step)
            due = cfg.resume_every and step - saved >= cfg.resume_every
            if step < last and saved != step and (due or stop):
                save_resume()
                saved = step
            if stop and step < last:
                raise TrainingStopped(f"training in {out_dir} stopped by {stop[0]} after step {step} of {cfg.steps}; "
                                      "its resume state is saved, rerun to continue")
    if step < cfg.steps:
        return log
    seconds = log[-1]["seconds"] if log else 0.0
    tokens_seen = cfg.steps * cfg.batch_size * seq_len
    summary = {
        "steps": cfg.steps, "checkpoints": [f"step-{n}" for n in sorted(set(cfg.checkpoints))],
        "final_loss": log[-1]["loss"] if log else None,
        "loss_at_checkpoints": {str(row["step"]): row["loss"] for row in log if row["step"] in cfg.checkpoints},
        "tokens_seen": tokens_seen, "seconds": seconds, "tokens_per_second": tokens_seen / seconds if seconds else None,
        "n_parameters": sum(p.numel() for p in model.parameters()), "n_sequences": n_rows, "seq_len": seq_len,
        "vocab_size": vocab_size, "device": device.type, "config": cfg.to_json(),
    }
    with atomic_path(out_dir / "train_state.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return log
