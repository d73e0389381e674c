"""Hostile and malformed adapter configs: every one is a CkptError with a hint, never a hang or a raw exception.

``alpha_pattern``/``rank_pattern`` keys are regular expressions in PEFT (``get_pattern_key``); ckpt accepts a
subset that cannot backtrack catastrophically and refuses the rest by its structure, so no test here depends on
time: a pattern that could run for minutes is refused before it runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

import ckpt  # noqa: E402
from ckpt.errors import CkptError, RecordError, StateMismatchError  # noqa: E402
from ckpt.interop import import_peft_folder  # noqa: E402
from ckpt.lineage import CONFIG_KEY, save_adapter  # noqa: E402
from ckpt.lineage._patterns import compile_pattern  # noqa: E402

from .models import adapter_state, tiny_llama, weights, with_lora  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")]

GOOD: dict[str, Any] = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}


@pytest.fixture
def family(tmp_path: Path) -> tuple[ckpt.Store, dict[str, torch.Tensor]]:
    store = ckpt.init(str(tmp_path / "store"), chunk_size=4096)
    model = tiny_llama()
    store.save({"model": weights(model)}, "main", model="tiny-llama")
    return store, adapter_state(with_lora(model))


@pytest.mark.parametrize(
    ("key", "module", "expected"),
    [
        ("q_proj", "model.layers.0.self_attn.q_proj", True),
        ("self_attn.q_proj", "model.layers.0.self_attn.q_proj", True),
        ("attn.q_proj", "model.layers.0.self_attn.q_proj", False),  # a tail must start after a '.'
        ("layers.1.self_attn.q_proj", "model.layers.0.self_attn.q_proj", False),
        (r"layers\.[01]\..*q_proj", "model.layers.1.self_attn.q_proj", True),
        ("^model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj", True),
        ("^layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj", False),  # '^' only at the real start
        ("(q|v)_proj", "model.layers.0.self_attn.v_proj", True),
        ("q_proj$", "model.layers.0.self_attn.q_proj", True),
        ("q_pro", "model.layers.0.self_attn.q_proj", False),
    ],
)
def test_patterns_match_as_peft_does(key: str, module: str, expected: bool) -> None:
    """The same answer as PEFT's get_pattern_key: re.match(rf"(.*\\.)?({key})$", module)."""
    assert compile_pattern(key, "alpha_pattern").matches(module) is expected
    assert (re.match(rf"(.*\.)?({key})$", module) is not None) is expected


@pytest.mark.parametrize(
    "key",
    [
        r"([\w.]+)+#",  # nested quantifier: minutes of backtracking in re
        "(a+)+b",
        "(a|aa)*c",  # quantified group
        "(",  # re.error in re
        ")",
        "[a-",
        "a**",
        "a*?",  # lazy
        r"(\w)\1",  # backreference
        "(?=q)q_proj",  # lookahead
        "(?i)q_proj",  # flags
        r"\bq_proj",
        ".*.*.*x",  # three unbounded repetitions
        "|".join("abcdefghij"),  # nine alternatives
        "a{1,9999}",  # re takes it as a repeat
        "a{,5}",
        "a{1,99}b+c*",  # three unbounded repetitions
        "q_proj^",
        "",
        "x" * 300,
    ],
)
def test_dangerous_or_invalid_patterns_are_refused(key: str) -> None:
    with pytest.raises(RecordError) as info:
        compile_pattern(key, "alpha_pattern")
    assert "alpha_pattern" in str(info.value) and info.value.hint


def test_accepted_worst_cases_stay_cheap() -> None:
    """The worst the accepted subset allows, on a long module name, finishes (bounded polynomial work)."""
    module = ".".join(["a" * 40] * 24)  # 983 characters, 23 dots
    for key in (".*a.*b", "(a|aa)(a|aa)(a|aa)(a|aa)x", "a{0,16}a{0,16}a*a*c", "[a.]*[a.]+#"):
        assert compile_pattern(key, "rank_pattern").matches(module) is False
    with pytest.raises(RecordError, match="too long"):
        compile_pattern("a", "rank_pattern").matches("a" * 2000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"r": 0}, "positive integer 'r'"),
        ({"r": -4}, "positive integer 'r'"),
        ({"r": "4"}, "positive integer 'r'"),
        ({"r": 4.0}, "positive integer 'r'"),
        ({"r": True}, "positive integer 'r'"),
        ({"r": None}, "positive integer 'r'"),
        ({"lora_alpha": 0}, "lora_alpha"),
        ({"lora_alpha": [8]}, "lora_alpha"),
        ({"lora_alpha": 10**400}, "finite 'lora_alpha'"),
        ({"alpha_pattern": ["q_proj"]}, "'alpha_pattern' must be an object"),
        ({"alpha_pattern": {"q_proj": "8"}}, "alpha_pattern"),
        ({"alpha_pattern": {"([\\w.]+)+#": 8}}, "alpha_pattern key"),
        ({"alpha_pattern": {"(": 8}}, "alpha_pattern key"),
        ({"rank_pattern": {"q_proj": 0}}, "rank_pattern"),
        ({"rank_pattern": {"q_proj": 2.5}}, "rank_pattern"),
        ({"use_rslora": "yes"}, "'use_rslora' must be true or false"),
        ({"fan_in_fan_out": 1}, "'fan_in_fan_out' must be true or false"),
        ({"modules_to_save": "score"}, "modules_to_save"),
        ({"peft_type": 5}, "peft_type"),
    ],
)
def test_malformed_configs_are_record_errors(
    family: tuple[ckpt.Store, dict[str, torch.Tensor]], tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    store, state = family
    config = {**GOOD, **change}
    with pytest.raises(RecordError, match=re.escape(message)):
        save_adapter(store, "main", state, branch="x", config=config)

    folder = tmp_path / "adapter"  # the same config in a PEFT folder
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(RecordError, match=re.escape(message)):
        import_peft_folder(store, folder, "main", branch="x")

    # and recorded in a store by other means: refused when merged, never a raw exception
    forced = store.save({"model": state}, "forced", parents=["main"], relation="adapter", metadata={CONFIG_KEY: config})
    with pytest.raises(RecordError):
        ckpt.load_merged(store, forced.id)
    with pytest.raises(RecordError):
        ckpt.restore(tiny_llama(), store, forced.id)
    assert "x" not in store.branches()
    assert store.verify().ok


def test_rank_zero_and_mismatched_ranks(family: tuple[ckpt.Store, dict[str, torch.Tensor]]) -> None:
    store, state = family
    zero = {
        k: (torch.zeros(0, v.shape[1]) if ".lora_A." in k else torch.zeros(v.shape[0], 0)) for k, v in state.items()
    }
    with pytest.raises(StateMismatchError, match="rank 0"):
        save_adapter(store, "main", zero, branch="x", config=GOOD)
    forced = store.save({"model": zero}, "forced", parents=["main"], relation="adapter", metadata={CONFIG_KEY: GOOD})
    with pytest.raises(CkptError, match="rank 0"):  # never ZeroDivisionError
        ckpt.load_merged(store, forced.id)
    with pytest.raises(StateMismatchError, match="r=8"):
        save_adapter(store, "main", state, branch="x", config={**GOOD, "r": 8})
    with pytest.raises(StateMismatchError, match="r=2"):
        save_adapter(store, "main", state, branch="x", config={**GOOD, "rank_pattern": {"q_proj": 2}})
    with pytest.raises(StateMismatchError, match="rank"):
        save_adapter(store, "main", state, branch="x", config={**GOOD, "r": 10**30})


def test_config_files_that_are_not_configs(family: tuple[ckpt.Store, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    store, state = family
    from safetensors.torch import save_file

    for i, text in enumerate(["[" * 100_000 + "]" * 100_000, "not json", "[1, 2]", '"LORA"', "{" * 50_000]):
        folder = tmp_path / f"adapter{i}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(text)
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "adapter_model.safetensors"))
        with pytest.raises(RecordError) as info:
            import_peft_folder(store, folder, "main", branch="x")
        assert "adapter_config.json" in str(info.value) or "config" in str(info.value)
    assert "x" not in store.branches()
