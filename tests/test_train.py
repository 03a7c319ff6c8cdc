"""Training OPT models from scratch: tokenizer, checkpoints, NoPos, determinism and resume."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer

from neuron_census.data.bpe import train_bpe_tokenizer
from neuron_census.training.train import (
    TrainConfig,
    build_model,
    deterministic_cpu,
    lr_at,
    make_optimizer,
    model_config,
    resumable,
    train_opt,
    train_step,
)

SEQ_LEN = 32
BOS, EOS, PAD = 2, 2, 1
POSITION_KEY = "model.decoder.embed_positions.weight"


def _texts(n_docs: int = 60, seed: int = 0) -> list[str]:
    """A few KB of templated English: regular enough that a tiny model learns it in a few steps."""
    rng = random.Random(seed)
    nouns = ["cat", "dog", "bird", "fish", "horse", "mouse", "teacher", "farmer"]
    verbs = ["sees", "likes", "follows", "chases", "helps", "finds"]
    adjectives = ["big", "small", "red", "old", "happy", "quiet"]
    docs = []
    for _ in range(n_docs):
        sentences = [
            f"The {rng.choice(adjectives)} {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)}."
            for _ in range(rng.randint(3, 6))
        ]
        docs.append(" ".join(sentences))
    return docs


def _tiny_config(**overrides: object) -> TrainConfig:
    base = dict(
        d_model=32, n_layers=2, n_heads=2, ffn_dim=64, max_positions=SEQ_LEN, steps=30, batch_size=8,
        lr=1e-2, warmup_steps=3, checkpoints=(15, 30), seed=0,
    )
    return TrainConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "bpe"
    train_bpe_tokenizer(_texts(), 300, out)
    return out


@pytest.fixture(scope="module")
def tokens(tokenizer_dir: Path) -> np.ndarray:
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(_texts(), add_special_tokens=False):
        ids.extend([*encoding.ids, EOS])
    body = SEQ_LEN - 1
    n = len(ids) // body
    packed = np.asarray(ids[: n * body], dtype=np.int32).reshape(n, body)
    return np.concatenate([np.full((n, 1), BOS, dtype=np.int32), packed], axis=1)


@pytest.fixture(scope="module")
def vocab_size(tokenizer_dir: Path) -> int:
    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()


def _train(
    tokens: np.ndarray, cfg: TrainConfig, out: Path, vocab_size: int, tokenizer_dir: Path | None = None, **kw: object
) -> list[dict]:
    return train_opt(
        tokens, cfg, out, vocab_size=vocab_size, bos_id=BOS, eos_id=EOS, pad_id=PAD,
        tokenizer_dir=tokenizer_dir, progress=False, device="cpu", **kw,
    )


@pytest.fixture(scope="module")
def runs(
    tmp_path_factory: pytest.TempPathFactory, tokens: np.ndarray, vocab_size: int, tokenizer_dir: Path
) -> dict[str, tuple[Path, list[dict]]]:
    """The positions and NoPos models, trained once for the tests that only read them."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, positions in (("pos", True), ("nopos", False)):
        log = _train(tokens, _tiny_config(positions=positions), root / name, vocab_size, tokenizer_dir)
        out[name] = (root / name, log)
    return out


# --- tokenizer ---------------------------------------------------------------------------------------


def test_tokenizer_loads_with_opt_special_ids(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (2, 2, 1, 3)
    assert 260 < len(tok) <= 300
    ids = tok("The big cat sees the dog.").input_ids
    assert ids[0] == 2  # OPT prepends </s> as BOS
    assert tok.decode(ids[1:]) == "The big cat sees the dog."


def test_tokenizer_is_deterministic(tmp_path: Path, tokenizer_dir: Path) -> None:
    train_bpe_tokenizer(_texts(), 300, tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == (tokenizer_dir / "tokenizer.json").read_bytes()


def test_tokenizer_rejects_too_small_vocab(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(_texts(), 100, tmp_path / "small")
    assert not (tmp_path / "small").exists()


# --- config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        dict(n_heads=3),
        dict(micro_batches=3),  # does not divide batch_size 8
        dict(warmup_steps=30, steps=30, checkpoints=(30,)),
        dict(architecture="gpt2", positions=False),  # NoPos is an OPT variant
    ],
)
def test_invalid_config_raises(overrides: dict) -> None:
    with pytest.raises(ValueError):
        _tiny_config(**overrides)


def test_lr_schedule_warms_up_then_decays_to_a_tenth() -> None:
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, checkpoints=(100,))
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)
    assert lr_at(100, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_linear_schedule_decays_to_a_tenth_in_a_straight_line() -> None:
    """OPT's own schedule: after warm-up, linear decay to 10% of the peak at the last step."""
    cosine = TrainConfig(steps=100, warmup_steps=10, lr=1.0, checkpoints=(100,))
    linear = TrainConfig(steps=100, warmup_steps=10, lr=1.0, checkpoints=(100,), lr_schedule="linear")
    assert [lr_at(s, linear) for s in (0, 9, 10)] == [lr_at(s, cosine) for s in (0, 9, 10)]  # the same warm-up
    assert lr_at(37, linear) == pytest.approx(1.0 - 0.9 * 27 / 90)
    assert lr_at(37, cosine) == pytest.approx(0.1 + 0.45 * (1 + np.cos(np.pi * 27 / 90)))
    assert lr_at(100, linear) == pytest.approx(0.1)
    steps = np.diff([lr_at(s, linear) for s in range(10, 101)])
    assert np.allclose(steps, -0.9 / 90)


# --- training ----------------------------------------------------------------------------------------


def test_deterministic_cpu_sets_and_restores_the_global_settings() -> None:
    """Inside: deterministic kernels, fresh tensors not NaN-filled (nothing reads them); after: as before."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory)
    with deterministic_cpu(torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.utils.deterministic.fill_uninitialized_memory is False
    assert (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory) == before


def test_loss_falls(runs: dict) -> None:
    for _, log in runs.values():
        assert [row["step"] for row in log] == list(range(1, 31))
        first, last = log[0]["loss"], np.mean([row["loss"] for row in log[-5:]])
        assert first > 5.0  # about ln(vocab) at initialisation
        assert last < first - 2.0
        assert log[-1]["tokens_seen"] == 30 * 8 * SEQ_LEN


def test_outputs_written(runs: dict) -> None:
    out, log = runs["pos"]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["resume", "step-15", "step-30", "train_log.jsonl", "train_state.json"]
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert rows == log
    state = json.loads((out / "train_state.json").read_text())
    assert state["steps"] == 30 and state["checkpoints"] == ["step-15", "step-30"]
    assert state["final_loss"] == log[-1]["loss"]
    assert state["config"]["positions"] is True
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / "step-30" / name).is_file()


def test_checkpoints_load_as_opt(runs: dict, tokens: np.ndarray, vocab_size: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = runs["pos"]
    model = AutoModelForCausalLM.from_pretrained(out / "step-30")
    assert type(model).__name__ == "OPTForCausalLM"
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.ffn_dim, cfg.vocab_size) == (32, 2, 64, vocab_size)
    assert cfg.activation_function == "relu" and cfg.do_layer_norm_before
    assert model.lm_head.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    tokenizer = AutoTokenizer.from_pretrained(out / "step-30")
    assert tokenizer.bos_token_id == BOS
    batch = torch.from_numpy(tokens[:4]).long()
    with torch.no_grad():
        logits = model(input_ids=batch).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab_size), batch[:, 1:].reshape(-1))
    assert loss.item() < 4.0  # the trained model, not a fresh one


def test_gpt2_architecture_trains_and_loads_as_gpt2(tmp_path: Path, tokens: np.ndarray, vocab_size: int, tokenizer_dir: Path) -> None:
    """GELU FFN, learned positions, tied embeddings; seeds differ only in their weights."""
    from transformers import AutoModelForCausalLM

    logs = {}
    for seed in (0, 1):
        cfg = _tiny_config(architecture="gpt2", seed=seed, steps=20, checkpoints=(20,))
        logs[seed] = _train(tokens, cfg, tmp_path / f"seed{seed}", vocab_size, tokenizer_dir)
    assert logs[0][-1]["loss"] < logs[0][0]["loss"] - 0.5
    models = [AutoModelForCausalLM.from_pretrained(tmp_path / f"seed{seed}" / "step-20") for seed in (0, 1)]
    assert type(models[0]).__name__ == "GPT2LMHeadModel"
    cfg = models[0].config
    assert (cfg.n_embd, cfg.n_layer, cfg.n_inner, cfg.activation_function) == (32, 2, 64, "gelu_new")
    assert models[0].lm_head.weight.data_ptr() == models[0].transformer.wte.weight.data_ptr()
    assert not torch.equal(models[0].transformer.h[0].mlp.c_fc.weight, models[1].transformer.h[0].mlp.c_fc.weight)


def test_nopos_position_table_is_zero(runs: dict) -> None:
    nopos = load_file(runs["nopos"][0] / "step-30" / "model.safetensors")
    pos = load_file(runs["pos"][0] / "step-30" / "model.safetensors")
    assert nopos[POSITION_KEY].shape == (SEQ_LEN + 2, 32)  # OPT's table has an offset of 2
    assert torch.count_nonzero(nopos[POSITION_KEY]) == 0
    assert torch.count_nonzero(pos[POSITION_KEY]) == pos[POSITION_KEY].numel()
    early = load_file(runs["pos"][0] / "step-15" / "model.safetensors")
    assert not torch.equal(early[POSITION_KEY], pos[POSITION_KEY])  # positions are trained


def test_same_seed_same_weights(
    runs: dict, tmp_path: Path, tokens: np.ndarray, vocab_size: int, tokenizer_dir: Path
) -> None:
    log = _train(tokens, _tiny_config(), tmp_path / "again", vocab_size, tokenizer_dir)
    assert [row["loss"] for row in log] == [row["loss"] for row in runs["pos"][1]]
    for step in (15, 30):
        first = (runs["pos"][0] / f"step-{step}" / "model.safetensors").read_bytes()
        assert (tmp_path / "again" / f"step-{step}" / "model.safetensors").read_bytes() == first


def test_other_seed_other_weights(runs: dict, tmp_path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    _train(tokens, _tiny_config(seed=1, steps=2, warmup_steps=1, checkpoints=(2,)), tmp_path / "seed1", vocab_size)
    other = load_file(tmp_path / "seed1" / "step-2" / "model.safetensors")
    first = load_file(runs["pos"][0] / "step-15" / "model.safetensors")
    assert not torch.equal(other["model.decoder.layers.0.fc1.weight"], first["model.decoder.layers.0.fc1.weight"])


@pytest.mark.parametrize("positions", [True, False])
def test_resume_matches_uninterrupted(tmp_path: Path, tokens: np.ndarray, vocab_size: int, positions: bool) -> None:
    cfg = _tiny_config(steps=20, checkpoints=(10, 20), positions=positions, dropout=0.1)
    full = _train(tokens, cfg, tmp_path / "full", vocab_size)
    first = _train(tokens, cfg, tmp_path / "resumed", vocab_size, stop_after=10)
    assert [row["step"] for row in first] == list(range(1, 11))
    assert not (tmp_path / "resumed" / "step-20").exists()
    assert not (tmp_path / "resumed" / "train_state.json").exists()
    resumed = _train(tokens, cfg, tmp_path / "resumed", vocab_size)
    assert [(r["step"], r["loss"], r["lr"]) for r in resumed] == [(r["step"], r["loss"], r["lr"]) for r in full]
    a = load_file(tmp_path / "full" / "step-20" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "step-20" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


KILLED_TRAINING = """
import json, sys
import numpy as np
import torch
from neuron_census.training import train
spec = json.loads(sys.argv[2])
torch.set_num_threads(spec["threads"])  # CPU training is bit-reproducible for a fixed thread count
train.MAX_LOG_ROWS = spec["max_log_rows"]
cfg = train.TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["cfg"].items()})
train.train_opt(np.load(sys.argv[1]), cfg, spec["out"], vocab_size=spec["vocab"], bos_id=2, eos_id=2, pad_id=1,
                progress=False, device="cpu")
"""


@pytest.mark.parametrize(
    ("sent", "kill_after", "resume_every", "resumes_from"),
    [("SIGKILL", 14, 4, 12), ("SIGTERM", 13, 0, 13)],
    ids=["sigkill-between-resume-states", "sigterm-saves-then-stops"],
)
def test_interrupted_run_resumes_bit_for_bit(
    tmp_path: Path, tokens: np.ndarray, vocab_size: int, monkeypatch: pytest.MonkeyPatch,
    sent: str, kill_after: int, resume_every: int, resumes_from: int,
) -> None:
    """SIGKILL loses the steps since the last resume state; SIGTERM (a cluster's time limit) saves first.

    Log rows every 4 steps, so a SIGTERM state at step 13 also carries the loss of step 13 towards the
    next row; the resumed run must log the same means and reach the same weights as an uninterrupted one.
    """
    monkeypatch.setattr("neuron_census.training.train.MAX_LOG_ROWS", 5)  # 20 steps: a log row every 4
    cfg = _tiny_config(steps=20, checkpoints=(20,), resume_every=resume_every, dropout=0.1)
    full = _train(tokens, cfg, tmp_path / "full", vocab_size)
    np.save(tmp_path / "tokens.npy", tokens)
    spec = {"cfg": cfg.to_json(), "out": str(tmp_path / "killed"), "vocab": vocab_size,
            "threads": torch.get_num_threads(), "max_log_rows": 5}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_TRAINING, str(tmp_path / "tokens.npy"), json.dumps(spec)],
        env={**os.environ, "NEURON_CENSUS_KILL_AT": f"train-step:{kill_after}", "NEURON_CENSUS_KILL_SIGNAL": sent},
        capture_output=True,
        text=True,
    )
    if sent == "SIGKILL":
        assert killed.returncode == -signal.SIGKILL, killed.stderr
    else:
        assert killed.returncode == 1
        assert f"TrainingStopped: training in {tmp_path / 'killed'} stopped by SIGTERM after step 13 of 20" in killed.stderr
    assert json.loads((tmp_path / "killed" / "resume" / "state.json").read_text())["step"] == resumes_from
    assert not (tmp_path / "killed" / "step-20").exists()
    resumed = _train(tokens, cfg, tmp_path / "killed", vocab_size)
    assert [row["step"] for row in full] == [4, 8, 12, 16, 20]
    assert [(r["step"], r["loss"], r["lr"]) for r in resumed] == [(r["step"], r["loss"], r["lr"]) for r in full]
    a = load_file(tmp_path / "full" / "step-20" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "step-20" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_state_ignores_the_save_schedule(tmp_path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    """Checkpoints and resume_every may change between a run and its resumption; the trajectory may not."""
    _train(tokens, _tiny_config(steps=4, warmup_steps=1, checkpoints=(2, 4)), tmp_path / "run", vocab_size, stop_after=2)
    later = _tiny_config(steps=4, warmup_steps=1, checkpoints=(2, 3, 4), resume_every=1)
    assert resumable(tmp_path / "run", later)
    assert not resumable(tmp_path / "run", _tiny_config(steps=4, warmup_steps=1, checkpoints=(2, 4), lr=5e-3))
    assert not resumable(tmp_path / "nothing", later)
    log = _train(tokens, later, tmp_path / "run", vocab_size)
    assert [row["step"] for row in log] == [1, 2, 3, 4] and (tmp_path / "run" / "step-3").is_dir()


def test_micro_batches_add_up_to_the_whole_batch_gradient(tokens: np.ndarray, vocab_size: int) -> None:
    """Four micro-batches of 2 sequences give the loss and gradient of the batch of 8 (up to float32 rounding);
    a batch of other sequences would not."""
    batch = torch.from_numpy(tokens[:8]).long()
    grads, losses = {}, {}
    for parts, rows in ((1, batch), (4, batch), (1, torch.from_numpy(tokens[8:16]).long())):
        cfg = _tiny_config(micro_batches=parts)
        model = build_model(cfg, model_config(cfg, vocab_size, bos_id=BOS, eos_id=EOS, pad_id=PAD))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(model, cfg, torch.device("cpu"))
        loss = train_step(model, optimizer, params, rows, lr=0.0, cfg=cfg, device=torch.device("cpu"))
        key = (parts, rows is batch)
        losses[key] = float(loss)
        grads[key] = torch.cat([p.grad.reshape(-1) for p in params])
    assert losses[(4, True)] == pytest.approx(losses[(1, True)], rel=1e-6)
    torch.testing.assert_close(grads[(4, True)], grads[(1, True)], rtol=1e-4, atol=1e-7)
    assert not torch.allclose(grads[(1, False)], grads[(1, True)], rtol=1e-2, atol=1e-4)


def test_a_resume_state_older_than_a_setting_resumes_with_its_default(
    tmp_path: Path, tokens: np.ndarray, vocab_size: int
) -> None:
    """States saved before `micro_batches` and `lr_schedule` existed trained with their defaults."""
    cfg = _tiny_config(steps=4, warmup_steps=1, checkpoints=(2, 4))
    _train(tokens, cfg, tmp_path / "run", vocab_size, stop_after=2)
    state = tmp_path / "run" / "resume" / "state.json"
    meta = json.loads(state.read_text())
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in ("micro_batches", "lr_schedule")}
    state.write_text(json.dumps(meta))
    assert resumable(tmp_path / "run", cfg)
    assert not resumable(tmp_path / "run", _tiny_config(steps=4, warmup_steps=1, checkpoints=(2, 4), lr_schedule="linear"))
    assert [row["step"] for row in _train(tokens, cfg, tmp_path / "run", vocab_size)] == [1, 2, 3, 4]


def test_resume_refuses_a_different_run(tmp_path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    cfg = _tiny_config(steps=4, warmup_steps=1, checkpoints=(2, 4))
    _train(tokens, cfg, tmp_path / "run", vocab_size, stop_after=2)
    with pytest.raises(ValueError, match="different config"):
        _train(tokens, _tiny_config(steps=4, warmup_steps=1, checkpoints=(2, 4), lr=5e-3), tmp_path / "run", vocab_size)


def test_rejects_sequences_longer_than_positions(tmp_path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    with pytest.raises(ValueError, match="max_positions"):
        _train(tokens, _tiny_config(max_positions=16), tmp_path / "long", vocab_size)
