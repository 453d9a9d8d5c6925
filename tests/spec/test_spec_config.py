"""speculative_config is checked at start, with errors that name the field."""

from __future__ import annotations

import argparse
import json

import pytest

from pagoda.engine.args import EngineArgs
from pagoda.spec.config import SpeculativeConfig


def test_vllm_shaped_dict_and_json():
    c = SpeculativeConfig.from_dict({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1,
                                     "prompt_lookup_max": 5})
    assert (c.method, c.num_speculative_tokens, c.prompt_lookup_min, c.prompt_lookup_max) == ("ngram", 3, 1, 5)
    assert SpeculativeConfig.from_dict(json.dumps({"method": "ngram"})) == SpeculativeConfig()
    with pytest.raises(AttributeError):
        c.num_speculative_tokens = 2  # type: ignore[misc]  # frozen


@pytest.mark.parametrize("options, field", [
    ({"method": "eagle"}, "method"),
    ({"num_speculative_tokens": 2}, "method"),
    ({"method": "ngram", "num_speculative_tokens": 0}, "num_speculative_tokens"),
    ({"method": "ngram", "num_speculative_tokens": 2.5}, "num_speculative_tokens"),
    ({"method": "ngram", "prompt_lookup_min": 0}, "prompt_lookup_min"),
    ({"method": "ngram", "prompt_lookup_min": 4, "prompt_lookup_max": 2}, "prompt_lookup_max"),
    ({"method": "ngram", "num_spec_tokens": 2}, "num_spec_tokens"),
    ({"method": "ngram", "model": "x.gguf"}, "model"),
    ({"method": "draft_model"}, "model"),
    ({"method": "draft_model", "draft_num_layers": 0}, "draft_num_layers"),
    ({"method": "draft_model", "draft_num_layers": 2.0}, "draft_num_layers"),
    ({"method": "ngram", "draft_num_layers": 2}, "draft_num_layers"),
    ({"method": "draft_model", "model": 3}, "model"),
    ({"method": "ngram", "adaptive": "yes"}, "adaptive"),
    ({"method": "ngram", "step_overhead_rows": -1}, "step_overhead_rows"),
    ({"method": "ngram", "cost_model": "guess"}, "cost_model"),
    ("{not json", "JSON"),
    ([1, 2], "JSON object"),
])
def test_bad_config_names_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        SpeculativeConfig.from_dict(options)
    with pytest.raises(ValueError, match=field):
        EngineArgs(speculative_config=options)


def test_draft_model_shapes():
    c = SpeculativeConfig.from_dict({"method": "draft_model", "model": "draft.gguf", "num_speculative_tokens": 3})
    assert (c.method, c.model, c.num_speculative_tokens, c.draft_num_layers) == ("draft_model", "draft.gguf", 3, None)
    c = SpeculativeConfig.from_dict({"method": "draft_model", "draft_num_layers": 4})  # a self-draft
    assert (c.model, c.draft_num_layers) == (None, 4)


def test_static_batching_refused_at_start():
    from pagoda.config import SchedulerConfig
    from pagoda.engine.schedulers import make_scheduler
    from pagoda.kv_cache.kv_cache_manager import KVCacheManager
    from pagoda.spec.speculator import Speculator

    config = SchedulerConfig(max_num_batched_tokens=64, max_num_seqs=4, max_model_len=64, batching="static")
    with pytest.raises(ValueError, match="speculative_config.*continuous"):
        make_scheduler(config, KVCacheManager(8, 4), Speculator(SpeculativeConfig()))


def test_cli_flag():
    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    args = EngineArgs.from_cli_args(parser.parse_args(["--speculative-config", '{"method": "ngram", '
                                                       '"num_speculative_tokens": 2}']))
    assert args.resolved_speculative_config() == SpeculativeConfig(num_speculative_tokens=2)
    assert EngineArgs.from_cli_args(parser.parse_args([])).resolved_speculative_config() is None
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        EngineArgs.from_cli_args(parser.parse_args(["--speculative-config", '{"method": "ngram", '
                                                    '"num_speculative_tokens": -1}']))
