"""One source for every engine default and one name per option, from the flag to the config."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, fields

import pytest

from pagoda.config import CacheConfig, ModelConfig, SchedulerConfig
from pagoda.distributed.parallel_config import ParallelConfig
from pagoda.engine.args import EngineArgs

# config fields that hold a value resolved from an option rather than the option itself
RESOLVED = {(CacheConfig, "num_blocks"), (ParallelConfig, "num_threads"), (ParallelConfig, "master_addr"),
            (ParallelConfig, "pipeline_virtual_engines")}


def engine_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    EngineArgs.add_cli_args(parser)
    return parser


def flags_by_dest() -> dict[str, argparse.Action]:
    return {a.dest: a for a in engine_parser()._actions if a.dest != "help"}


def test_every_field_has_a_flag_of_its_name_and_default():
    actions = flags_by_dest()
    assert set(actions) == {f.name for f in fields(EngineArgs)}
    for f in fields(EngineArgs):
        assert "--" + f.name.replace("_", "-") in actions[f.name].option_strings
    assert vars(engine_parser().parse_args([])) == asdict(EngineArgs())


def test_configs_keep_the_option_names_and_defaults():
    options = {f.name: f.default for f in fields(EngineArgs)}
    for config in (CacheConfig, SchedulerConfig, ParallelConfig):
        for f in fields(config):
            if (config, f.name) in RESOLVED:
                continue
            assert f.name in options, f"{config.__name__}.{f.name} has no option of its name"
            if f.default is not MISSING:
                assert f.default == options[f.name], f"{config.__name__}.{f.name}"
    assert ModelConfig.__dataclass_fields__["attention_backend"].default == EngineArgs.attention_backend
    assert ModelConfig.__dataclass_fields__["weights_memory"].default == EngineArgs.weights_memory
    for _, name in RESOLVED:  # resolved from an option that is None ("work it out") or absent
        assert options.get(name) is None


NON_DEFAULT = {
    "model": "m.gguf", "tokenizer": "tok", "dtype": "float32", "quantization": None, "attention_backend": "torch",
    "max_model_len": 512, "block_size": 8, "kv_cache_memory_gb": 0.5, "num_kv_blocks": 40, "max_num_seqs": 3,
    "kv_cache_dtype": "int8", "weights_memory": "packed", "max_num_batched_tokens": 99, "batching": "static", "enable_prefix_caching": False,
    "enable_chunked_prefill": False, "scheduling_policy": "lpm", "max_wait_s": 1.5, "max_preemptions": 5,
    "seed": 7, "device": "cpu", "enforce_eager": True, "deterministic": True, "num_threads": 2,
    "show_progress": False, "tensor_parallel_size": 2, "pipeline_parallel_size": 2, "data_parallel_size": 3,
    "distributed_backend": "gloo", "router_policy": "round_robin", "pipeline_micro_batches": 2,
    "pipeline_virtual_engines": 1, "pipeline_stage_layers": (3, 4), "nnodes": 2, "node_rank": 1,
    "master_addr": "10.0.0.1", "master_port": 29500, "startup_timeout_s": 30.0,
    "distributed_executor_backend": "ray", "ray_address": "10.0.0.1:6379",
    "enable_lora": True, "max_loras": 2, "max_lora_rank": 8, "max_cpu_loras": 3,
    "speculative_config": '{"method": "ngram", "num_speculative_tokens": 2}',
}


def to_argv(values: dict) -> list[str]:
    argv = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            argv += [flag, ",".join(map(str, value))]
        else:
            argv += [flag, "none" if value is None else str(value)]
    return argv


def test_every_option_is_settable_from_the_cli_and_from_python():
    assert set(NON_DEFAULT) == {f.name for f in fields(EngineArgs)}
    from_python = EngineArgs(**NON_DEFAULT)
    assert from_python != EngineArgs()
    assert all(getattr(from_python, k) != f.default for k in NON_DEFAULT
               for f in fields(EngineArgs) if f.name == k)
    assert EngineArgs.from_cli_args(engine_parser().parse_args(to_argv(NON_DEFAULT))) == from_python


def test_the_parallel_config_carries_the_options_under_their_names():
    args = EngineArgs(tensor_parallel_size=2, pipeline_parallel_size=2, distributed_backend="gloo",
                      pipeline_micro_batches=2, pipeline_stage_layers=(1, 3), max_num_batched_tokens=99,
                      num_threads=1, startup_timeout_s=12.0)
    p = ParallelConfig.from_engine_args(args)
    for name in ("tensor_parallel_size", "pipeline_parallel_size", "distributed_backend", "pipeline_micro_batches",
                 "pipeline_stage_layers", "max_num_batched_tokens", "num_threads", "startup_timeout_s"):
        assert getattr(p, name) == getattr(args, name)
    assert p.pipeline_virtual_engines == 2  # None: one per stage


@pytest.mark.parametrize("option, value", [
    ("batching", "dynamic"), ("scheduling_policy", "sjf"), ("dtype", "float16"), ("quantization", "awq"),
    ("attention_backend", "flash"), ("distributed_backend", "nccl"), ("router_policy", "random"),
    ("distributed_executor_backend", "k8s"), ("weights_memory", "small"),
    ("block_size", 0), ("max_num_seqs", -1), ("tensor_parallel_size", 0), ("pipeline_micro_batches", 0),
    ("max_wait_s", -1.0), ("kv_cache_memory_gb", 0.0), ("num_kv_blocks", 0), ("node_rank", 3),
    ("pipeline_stage_layers", (1, 2, 3)), ("nnodes", 3), ("device", "tpu"), ("device", "cuda:x"),
])
def test_a_bad_option_is_refused_by_name(option, value):
    with pytest.raises(ValueError, match=rf"^{option}\b"):
        EngineArgs(**{option: value})


def test_the_llm_constructor_refuses_a_bad_option_before_loading():
    from pagoda import LLM

    with pytest.raises(ValueError, match="^batching must be one of"):
        LLM(model="no/such/model", batching="dynamic")


def test_the_cli_refuses_a_bad_choice():
    with pytest.raises(SystemExit):
        engine_parser().parse_args(["--scheduling-policy", "sjf"])


def test_serve_and_sampling_flags_read_their_defaults_from_the_configs():
    from pagoda.cli.main import build_parser
    from pagoda.sampling_params import SamplingParams
    from pagoda.server.config import ServerConfig

    args = vars(build_parser().parse_args(["serve"]))
    server_fields = {f.name for f in fields(ServerConfig)} & set(args)
    assert server_fields >= {"host", "port", "served_model_name", "api_key", "max_waiting", "image_model", "log_level"}
    assert {k: args[k] for k in server_fields} == {k: getattr(ServerConfig(), k) for k in server_fields}
    assert {k: v for k, v in args.items() if k in {f.name for f in fields(EngineArgs)}} == asdict(EngineArgs())
    gen = vars(build_parser().parse_args(["generate", "hi"]))
    for name in ("top_p", "top_k", "min_p", "repetition_penalty", "stop"):
        assert gen[name] == getattr(SamplingParams, name)  # the field defaults, before normalising
