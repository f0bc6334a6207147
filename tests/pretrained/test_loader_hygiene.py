"""What the pretrained loader refuses, and how: every bad file is one ValueError naming it (and
the tensor), quantised dtypes are refused by name from the header, non-finite weights unless
explicitly allowed; through the training CLI each is one ``error:`` line."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from sleepjax.models import ModelConfig, init_params
from sleepjax.pretrained import load_pretrained, load_tokenizer, save_pretrained
from support.training import REPO, write_tiny_config_file

# One worker runs the module (the good checkpoint its tests damage is written once).
pytestmark = pytest.mark.xdist_group("test_loader_hygiene")

TENSOR = "model.layers.0.mlp.up_proj.weight"
SOURCE = ModelConfig(vocab_size=64, d_model=32, layer_pattern="AA", attn_heads=2,
                     attn_head_dim=16, mlp_hidden=64)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("llama") / "good")
    save_pretrained(init_params(SOURCE, jax.random.PRNGKey(0)), SOURCE, path,
                    architecture="LlamaForCausalLM")
    return path


def _copy(good, tmp_path, edit) -> str:
    path = str(tmp_path / "edited")
    shutil.copytree(good, path)
    edit(path)
    return path


def _edit_tensor(change):
    def edit(path):
        tensors = load_file(os.path.join(path, "model.safetensors"))
        tensors[TENSOR] = change(tensors[TENSOR].copy())
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    return edit


def _set(array, value):
    array[1, 2] = value
    return array


def _write(name, data: bytes):
    def edit(path):
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    return edit


def _truncate(path):
    file = os.path.join(path, "model.safetensors")
    with open(file, "r+b") as f:
        f.truncate(os.path.getsize(file) // 2)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_weights_are_refused_naming_the_tensor(good, tmp_path, value, caplog):
    path = _copy(good, tmp_path, _edit_tensor(lambda a: _set(a, value)))
    with pytest.raises(ValueError, match=rf"^{path}: tensor '{TENSOR}' has 1 non-finite value\(s\) "
                                         r"\(NaN / Inf\) of 2048; .*allow_non_finite=True"):
        load_pretrained(path)
    with caplog.at_level(logging.WARNING):
        params, _ = load_pretrained(path, allow_non_finite=True)
    assert f"tensor '{TENSOR}' has 1 non-finite" in caplog.text
    assert not np.isfinite(np.asarray(params["blocks_0"]["mlp"]["w_up"])).all()


@pytest.mark.parametrize("dtype, named", [(ml_dtypes.float8_e4m3fn, "F8_E4M3 (an fp8 format)"),
                                          (np.int8, "I8 (an integer / quantised format)")])
def test_quantised_dtypes_are_refused_by_name(good, tmp_path, dtype, named):
    path = _copy(good, tmp_path, _edit_tensor(lambda a: a.astype(dtype)))
    with pytest.raises(ValueError, match=rf"^{path}/model.safetensors: tensor '{TENSOR}' is "
                                         rf"stored as {re.escape(named)}"):
        load_pretrained(path)


@pytest.mark.parametrize("edit, file, reason", [
    (_truncate, "model.safetensors", r"not a readable safetensors file \(.*incomplete metadata"),
    (_write("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00\xff\xfe{}" + b" " * 20),
     "model.safetensors", r"not a readable safetensors file"),
    (_write("config.json", b"{not json"), "config.json", r"not valid JSON \(Expecting"),
    (_write("config.json", b'{"model_type": "ll\xe4ma"}'), "config.json",
     r"not UTF-8 text \(byte 0xe4 at offset 18\)"),
    (_write("config.json", b"[1, 2]"), "config.json", r"must hold a JSON object .*got a list"),
    (_write("model.safetensors.index.json", b"{oops"), "model.safetensors.index.json",
     r"not valid JSON"),
])
def test_every_file_failure_is_one_value_error_naming_the_file(good, tmp_path, edit, file, reason):
    path = _copy(good, tmp_path, edit)
    with pytest.raises(ValueError, match=rf"^{path}/{file}: {reason}") as info:
        load_pretrained(path)
    assert "\n" not in str(info.value)


def test_null_config_values_name_the_file(good, tmp_path):
    def null_hidden_size(path):
        config = json.load(open(os.path.join(path, "config.json")))
        config["hidden_size"] = None
        json.dump(config, open(os.path.join(path, "config.json"), "w"))

    path = _copy(good, tmp_path, null_hidden_size)
    with pytest.raises(ValueError, match=rf"^{path}/config.json: .*model.d_model"):
        load_pretrained(path)


@pytest.mark.parametrize("content, reason", [(b"{bad", "key must be a string"),
                                             (b'{"a": "\xe4"}', "did not contain valid UTF-8"),
                                             (b'{"version": "1.0"}', "Model missing")])
def test_a_bad_tokenizer_file_is_named(tmp_path, content, reason):
    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(ValueError, match=rf"^{tmp_path}/tokenizer.json: not a readable tokenizers "
                                         rf"file \(.*{reason}"):
        load_tokenizer(str(tmp_path))


def test_the_training_cli_prints_one_line(good, tmp_path):
    nan = _copy(good, tmp_path, _edit_tensor(lambda a: _set(a, np.nan)))
    broken = str(tmp_path / "broken")
    shutil.copytree(good, broken)
    _write("config.json", b"{not json")(broken)
    for source, named in ((nan, f"tensor '{TENSOR}' has 1 non-finite"),
                          (broken, f"{broken}/config.json: not valid JSON")):
        config = write_tiny_config_file(tmp_path / "experiment.py", init__checkpoint_dir=source,
                                        init__insert_gdn_at=(1,), model__layer_pattern="AGAG",
                                        model__gdn_heads=2, model__gdn_head_dim=16)
        proc = subprocess.run([sys.executable, "-m", "sleepjax.train", f"--config={config}",
                               f"--workdir={tmp_path}/run", "--compilation_cache_dir=none"],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
        assert lines[0].startswith("error: ") and named in lines[0], lines
