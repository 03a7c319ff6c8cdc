"""Bad input through the jobs as the workflow runs them: one line naming the culprit, exit status 1, no output.

Each case runs a job function inside `job_log`, the wrapper every workflow script uses, and checks what a
user sees on the terminal, the exit status, that the full traceback went to the job's log only, and that
nothing exists at the output path.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import polars as pl
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from neuron_census.data.corpus import write_token_shard
from neuron_census.jobs.census import capture_job, merge_job, stats_job, tokenize_job
from neuron_census.jobs.common import ModelJob
from neuron_census.logs import PREFIX, job_log
from neuron_census.testing.planted import build_planted_model, get_recipe, planted_words
from neuron_census.capture.store import write_store
from neuron_census.data.tokenization import load_tokenizer

RECIPE = get_recipe("basic")
TOKENIZER = {"source": "words", "words": planted_words(RECIPE)}
SETTINGS = {"device": "cpu", "dtype": "float32", "batch_size": 4, "top_k": 2}


def fails_with_one_line(capfd: pytest.CaptureFixture[str], log: Path, job: Callable[[], None]) -> str:
    """Run `job` as a workflow script does; return the single error line the user sees."""
    with pytest.raises(SystemExit) as stop, job_log([log]):
        job()
    assert stop.value.code == 1
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith(PREFIX)]
    assert len(errors) == 1, errors
    logged = log.read_text()
    assert "Traceback" in logged and errors[0] in logged  # the details are in the log, not on the terminal
    return errors[0].removeprefix(PREFIX)


def shard(path: Path, tokens: np.ndarray, tokenizer_spec: dict = TOKENIZER) -> Path:
    write_token_shard(path, tokens, tokenizer=load_tokenizer("planted", tokenizer_spec), dataset="d", shard=0)
    return path


@pytest.fixture
def tokens() -> np.ndarray:
    rng = np.random.default_rng(0)
    ids = rng.integers(2, RECIPE.vocab_size, size=(8, 16))
    ids[:, 0] = 0
    return ids.astype(np.int32)


def capture(tmp_path: Path, model_spec: dict, shard_path: Path, **settings: object) -> Callable[[], None]:
    return lambda: capture_job(ModelJob("m", model_spec, "planted", TOKENIZER, {**SETTINGS, **settings}), shard_path, tmp_path / "out.zarr")


def saved_planted_model(folder: Path, fc1_scale: float = 1.0) -> Path:
    model = build_planted_model("basic")
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.fc1.weight.mul_(fc1_scale)
    model.save_pretrained(folder)
    return folder


def test_unknown_hub_model(tmp_path, tokens, capfd, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    job = capture(tmp_path, {"source": "hub", "id": "facebook/opt-doesnotexist"}, shard(tmp_path / "s.zarr", tokens))
    line = fails_with_one_line(capfd, tmp_path / "log", job)
    assert line.startswith("model 'm': cannot read the config of facebook/opt-doesnotexist: ")
    assert not (tmp_path / "out.zarr").exists()


def test_missing_local_folder(tmp_path, tokens, capfd):
    job = capture(tmp_path, {"source": "local", "path": str(tmp_path / "gone")}, shard(tmp_path / "s.zarr", tokens))
    assert fails_with_one_line(capfd, tmp_path / "log", job) == f"model 'm': folder {tmp_path / 'gone'} not found"
    assert not (tmp_path / "out.zarr").exists()


def test_architecture_without_adapter(tmp_path, tokens, capfd):
    config = AutoConfig.for_model("gpt_neo", vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
                                  attention_types=[[["global"], 1]], max_position_embeddings=32)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "neo")
    job = capture(tmp_path, {"source": "local", "path": str(tmp_path / "neo")}, shard(tmp_path / "s.zarr", tokens))
    assert fails_with_one_line(capfd, tmp_path / "log", job).startswith("no FFN adapter for model type 'gpt_neo' (model 'm')")
    assert not (tmp_path / "out.zarr").exists()


def test_remote_code_not_allowed(tmp_path, tokens, capfd):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "weird", "auto_map": {"AutoConfig": "c.WeirdConfig"}}))
    (folder / "c.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    (folder / "model.safetensors").write_bytes(b"")
    job = capture(tmp_path, {"source": "local", "path": str(folder)}, shard(tmp_path / "s.zarr", tokens))
    assert "needs code from its repository; set trust_remote_code: true" in fails_with_one_line(capfd, tmp_path / "log", job)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out.zarr").exists()


def test_sequences_longer_than_the_context(tmp_path, capfd):
    long = np.full((2, 65), 2, dtype=np.int32)
    long[:, 0] = 0
    job = capture(tmp_path, {"source": "planted", "recipe": "basic"}, shard(tmp_path / "s.zarr", long))
    assert "exceed model 'm' context of 64" in fails_with_one_line(capfd, tmp_path / "log", job)
    assert not (tmp_path / "out.zarr").exists()


def test_shards_of_another_tokenizer(tmp_path, tokens, capfd):
    other = {"source": "words", "words": [w.upper() for w in TOKENIZER["words"]]}
    job = capture(tmp_path, {"source": "planted", "recipe": "basic"}, shard(tmp_path / "s.zarr", tokens, other))
    assert "was made with tokenizer 'planted', not with model 'm' tokenizer 'planted'" in fails_with_one_line(
        capfd, tmp_path / "log", job
    )
    assert not (tmp_path / "out.zarr").exists()


def test_corrupted_token_shard(tmp_path, tokens, capfd):
    path = shard(tmp_path / "s.zarr", tokens)
    chunk = next(p for p in (path / "tokens" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:5])
    job = capture(tmp_path, {"source": "planted", "recipe": "basic"}, path)
    assert fails_with_one_line(capfd, tmp_path / "log", job).startswith(f"token shard {path}")
    assert not (tmp_path / "out.zarr").exists()


def test_fp16_overflow_is_reported_not_counted(tmp_path, tokens, capfd):
    """Pre-activations beyond float16's 65504 become inf: the capture stops instead of counting them."""
    folder = saved_planted_model(tmp_path / "loud", fc1_scale=1e5)
    job = capture(tmp_path, {"source": "local", "path": str(folder)}, shard(tmp_path / "s.zarr", tokens), dtype="float16")
    line = fails_with_one_line(capfd, tmp_path / "log", job)
    assert line.startswith("model 'm' layer 0: non-finite activations"), line
    assert not (tmp_path / "out.zarr").exists()


def test_the_same_model_in_float32_captures(tmp_path, tokens):
    """The control for the overflow case: the same weights in float32 are finite and captured."""
    folder = saved_planted_model(tmp_path / "loud", fc1_scale=1e5)
    capture(tmp_path, {"source": "local", "path": str(folder)}, shard(tmp_path / "s.zarr", tokens))()
    assert (tmp_path / "out.zarr" / "zarr.json").is_file()


def test_truncated_accumulator_store(tmp_path, capfd):
    attrs = {"model": "m", "datasets": ["d"], "sources": ["d/0"], "layers": [0]}
    states = {"fire_count": {"counts": np.ones((1, 4), dtype=np.int64), "tokens": np.array([3], dtype=np.int64)}}
    write_store(tmp_path / "a.zarr", attrs, states)
    shutil.rmtree(tmp_path / "a.zarr" / "fire_count" / "counts" / "c")
    (tmp_path / "a.zarr" / "fire_count" / "zarr.json").write_text("{")
    job = lambda: merge_job([tmp_path / "a.zarr"], tmp_path / "merged.zarr")  # noqa: E731
    assert fails_with_one_line(capfd, tmp_path / "log", job).startswith(f"accumulator store {tmp_path / 'a.zarr'} is")
    assert not (tmp_path / "merged.zarr").exists()


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        (b"\n \n", {}, r"text\.txt.*no documents"),
        (b"w02 w03\n\nw04 \xff w05\n", {}, r"text\.txt: invalid UTF-8 at byte offset 13 \(set encoding_errors: replace"),
        (b"w02 w03 w04\n", {"sequences_per_shard": 50}, r"dataset 'd' yields only 0 sequences of length 8; shard 0 needs sequences 0\.\.49"),
    ],
    ids=["empty", "invalid-utf8", "too-few-tokens"],
)
def test_bad_text(tmp_path, capfd, content, extra, message):
    (tmp_path / "text.txt").write_bytes(content)
    spec = {"source": "files", "paths": [str(tmp_path / "text.txt")], "seq_len": 8, "sequences_per_shard": 1,
            "min_document_chars": 1, **extra}
    job = lambda: tokenize_job("planted", TOKENIZER, "d", spec, 0, tmp_path / "shard.zarr")  # noqa: E731
    line = fails_with_one_line(capfd, tmp_path / "log", job)
    assert re.search(message, line), line
    assert not (tmp_path / "shard.zarr").exists()


def test_replace_policy_reads_invalid_utf8(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"w02 w03 \xff w04 w05 w06 w07 w08 w09 w10\n")
    spec = {"source": "files", "paths": [str(tmp_path / "t.txt")], "seq_len": 8, "sequences_per_shard": 1,
            "min_document_chars": 1, "encoding_errors": "replace"}
    tokenize_job("planted", TOKENIZER, "d", spec, 0, tmp_path / "shard.zarr")
    assert (tmp_path / "shard.zarr" / "zarr.json").is_file()


def test_bugs_keep_their_traceback(tmp_path):
    """Only bad input is shortened to one line; anything else is a bug and propagates as it is."""
    with pytest.raises(KeyError), job_log([tmp_path / "log"]):
        raise KeyError("a bug")


def saved_and_edited(folder: Path, edit: Callable[[dict], dict]) -> Path:
    """The basic planted model saved to `folder`, its safetensors tensors then edited by `edit`."""
    from safetensors.torch import load_file, save_file

    saved_planted_model(folder)
    tensors = edit(load_file(folder / "model.safetensors"))
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: {k: v for k, v in t.items() if ".layers.1.fc1." not in k},
         r"missing tensor\(s\) model\.decoder\.layers\.1\.fc1\.bias, model\.decoder\.layers\.1\.fc1\.weight$"),
        (lambda t: {**t, "model.decoder.layers.0.extra.weight": torch.zeros(3)},
         r"unexpected tensor\(s\) model\.decoder\.layers\.0\.extra\.weight$"),
        (lambda t: {**t, "model.decoder.layers.2.fc1.weight": torch.zeros(5, t["model.decoder.layers.2.fc1.weight"].shape[1])},
         r"1 tensor\(s\) of other shapes than config\.json gives \(model\.decoder\.layers\.2\.fc1\.weight: \[5, \d+\] stored, \[8, \d+\] expected\)"),
    ],
    ids=["missing", "unexpected", "other-shape"],
)
def test_weights_that_do_not_match_the_config_are_refused(tmp_path, tokens, capfd, edit, message):
    """Missing tensors would be randomly initialised and analysed as if trained: the job stops instead."""
    folder = saved_and_edited(tmp_path / "edited", edit)
    job = capture(tmp_path, {"source": "local", "path": str(folder)}, shard(tmp_path / "s.zarr", tokens))
    line = fails_with_one_line(capfd, tmp_path / "log", job)
    assert line.startswith(f"model 'm': the weights of {folder} do not match its config: "), line
    assert re.search(message, line), line
    assert "LOAD REPORT" not in capfd.readouterr().err
    assert not (tmp_path / "out.zarr").exists()


def test_truncated_safetensors_file_is_named(tmp_path, tokens, capfd):
    folder = saved_planted_model(tmp_path / "cut")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    job = capture(tmp_path, {"source": "local", "path": str(folder)}, shard(tmp_path / "s.zarr", tokens))
    line = fails_with_one_line(capfd, tmp_path / "log", job)
    assert line.startswith(f"model 'm': {weights} is not a readable safetensors file ("), line
    assert not (tmp_path / "out.zarr").exists()


def test_ngram_layers_outside_the_analysed_layers_stop_the_capture(tmp_path, tokens, capfd):
    """What the config cannot show before a hub model is loaded, the capture job refuses."""
    job = capture(tmp_path, {"source": "planted", "recipe": "basic"}, shard(tmp_path / "s.zarr", tokens), layers=[0, 1],
                  ngram_layers=[1, 2])
    line = fails_with_one_line(capfd, tmp_path / "log", job)
    assert line == "model 'm': capture.ngram_layers [2] are not among the analysed layers [0, 1]"
    assert not (tmp_path / "out.zarr").exists()


def test_empty_tokenizer_folder(tmp_path, tokens, capfd):
    (tmp_path / "tok").mkdir()
    job = lambda: load_tokenizer("t", {"source": "local", "path": str(tmp_path / "tok")})  # noqa: E731
    line = fails_with_one_line(capfd, tmp_path / "log", job)
    assert line.startswith(f"tokenizer 't': local folder {tmp_path / 'tok'} holds none of tokenizer.json, ")


@pytest.mark.parametrize("removed", ["fire_count/counts", "token_fire_count"])
def test_an_accumulator_missing_from_a_merged_store_is_named(tmp_path, tokens, capfd, removed):
    spec = {"source": "planted", "recipe": "basic"}
    capture(tmp_path, spec, shard(tmp_path / "s.zarr", tokens))()
    merge_job([tmp_path / "out.zarr"], tmp_path / "merged.zarr")
    shutil.rmtree(tmp_path / "merged.zarr" / removed)
    job = lambda: stats_job("m", [tmp_path / "merged.zarr"], "planted", TOKENIZER, {}, tmp_path / "a.parquet", tmp_path / "b.parquet")  # noqa: E731
    line = fails_with_one_line(capfd, tmp_path / "log", job)
    assert line.startswith(f"accumulator store {tmp_path / 'merged.zarr'} is unreadable: {removed}"), line
    assert not (tmp_path / "a.parquet").exists() and not (tmp_path / "b.parquet").exists()


def test_a_store_without_an_accumulator_the_statistics_need(tmp_path, tokens, capfd):
    attrs = {"model": "m", "datasets": ["d"], "sources": ["d/0"], "layers": [0]}
    write_store(tmp_path / "a.zarr", attrs, {"moments": {"sum": np.zeros((1, 4))}})
    job = lambda: stats_job("m", [tmp_path / "a.zarr"], "planted", TOKENIZER, {}, tmp_path / "a.parquet", tmp_path / "b.parquet")  # noqa: E731
    line = fails_with_one_line(capfd, tmp_path / "log", job)
    assert line == (f"accumulator store {tmp_path / 'a.zarr'} has no fire_count, position_fire_count, token_count, "
                    "token_fire_count, which model 'm''s neuron statistics needs")


def test_a_full_disk_names_the_output(tmp_path, capfd):
    """Writes that the file system refuses (here /dev/full, which answers every write with ENOSPC) name the
    output they were for, and leave nothing there."""
    import os

    from neuron_census.atomic import HOST
    from neuron_census.jobs.common import write_parquet

    output = tmp_path / "t.parquet"
    (tmp_path / f".t.parquet.tmp-{HOST}-{os.getpid()}").symlink_to("/dev/full")
    job = lambda: write_parquet(pl.DataFrame({"a": list(range(100_000))}), output)  # noqa: E731
    line = fails_with_one_line(capfd, tmp_path / "log", job)
    assert line == f"cannot write {output}: No space left on device (errno 28)"
    assert not output.exists()


def test_a_log_that_cannot_be_written(tmp_path, capfd):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as stop, job_log([tmp_path / "file" / "logs" / "job.log"]):
        pass
    assert stop.value.code == 1
    assert capfd.readouterr().err.strip() == f"{PREFIX}cannot write the job's log {tmp_path / 'file' / 'logs' / 'job.log'}: Not a directory"
