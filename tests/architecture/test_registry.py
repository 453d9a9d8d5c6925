"""The one registry shape: lazy creators by name, for attention, grammar backends, routers and models."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pagoda.registry import Registry, UnknownNameError


def test_register_get_create_and_refusals():
    shapes: Registry[str] = Registry("shape")
    calls = []

    @shapes.register("square")
    def square(side: int) -> str:
        calls.append(side)
        return "#" * side

    assert "square" in shapes and "circle" not in shapes and calls == []  # registering calls nothing
    assert shapes.create("square", 3) == "###" and calls == [3]
    assert shapes.get("square") is square
    with pytest.raises(ValueError, match="shape 'square' is already registered"):
        shapes.register("square")(lambda: "")
    with pytest.raises(UnknownNameError, match=r"unknown shape 'circle'; choose from \['square'\]"):
        shapes.create("circle")


def test_attention_backends():
    from pagoda.attention.backend import AttentionBackend
    from pagoda.attention.registry import ATTENTION_BACKENDS, resolve_backend
    from pagoda.attention.torch_backend import TorchAttentionBackend

    assert ATTENTION_BACKENDS.names() == ["cpu", "torch", "triton"]  # triton: imported only when created
    assert resolve_backend("torch") is TorchAttentionBackend
    assert issubclass(resolve_backend("cpu"), TorchAttentionBackend)
    assert issubclass(resolve_backend("auto"), AttentionBackend)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
        resolve_backend("flash")


def test_the_model_and_its_runner_share_one_backend(tiny_llama_dir):
    from pagoda import LLM
    from pagoda.attention.torch_backend import TorchAttentionBackend

    llm = LLM(tiny_llama_dir, attention_backend="torch", dtype="float32", num_kv_blocks=16, show_progress=False)
    runner = llm.engine.runner
    assert runner.attention is TorchAttentionBackend is runner.model.attention_backend
    assert {type(layer.self_attn.attn) for layer in runner.model.model.layers} == {TorchAttentionBackend}


def test_models_routers_and_grammar_backends(tiny_llama_dir):
    from pagoda.distributed.router import ROUTERS, PrefixAwareRouter, make_router
    from pagoda.errors import InvalidRequestError
    from pagoda.models.llama import LlamaForCausalLM
    from pagoda.models.registry import MODELS
    from pagoda.structured import GRAMMAR_BACKENDS, GrammarCompiler
    from pagoda.structured.llguidance_backend import LLGuidanceBackend
    from pagoda.weights.model_loader import ModelFiles

    assert all(MODELS.create(name) is LlamaForCausalLM for name in MODELS.names())
    with pytest.raises(ValueError, match="unknown architecture 'GPT2LMHeadModel'"):
        MODELS.create("GPT2LMHeadModel")
    assert ROUTERS.names() == ["least_outstanding", "prefix_aware", "round_robin"]
    router = make_router("prefix_aware", 3)
    assert isinstance(router, PrefixAwareRouter) and router.num_replicas == 3
    with pytest.raises(ValueError, match="unknown routing policy 'random'"):
        make_router("random", 2)
    assert GRAMMAR_BACKENDS.names() == ["llguidance"]
    compiler = GrammarCompiler(ModelFiles(tiny_llama_dir).tokenizer(None))
    assert isinstance(compiler.backend("llguidance"), LLGuidanceBackend)
    with pytest.raises(InvalidRequestError, match="unknown grammar backend 'xgrammar'") as e:
        compiler.backend("xgrammar")
    assert e.value.param == "guided_decoding_backend"


def test_registries_import_no_implementation():
    code = ("import sys; import pagoda.attention.registry, pagoda.models.registry, pagoda.distributed.router;"
            "import pagoda.structured.backend_registry;"
            "print([m for m in ('pagoda.attention.cpu_backend', 'pagoda.attention.torch_backend',"
            " 'pagoda.models.llama', 'pagoda.structured.llguidance_backend') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_engine_args_import_no_torch():
    """``pagoda --help`` builds the engine's flags (choices from the registries) without torch."""
    code = "import sys, pagoda.engine.args as a; a.EngineArgs(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
