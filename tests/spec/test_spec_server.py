"""The server with --speculative-config: the real openai client gets the same greedy text as the
offline engine without speculation, and /metrics carries the spec_decode counters."""

from __future__ import annotations

import sys
from pathlib import Path

from pagoda import LLM, SamplingParams
from pagoda.server.config import ServerConfig
from pagoda.server.engine_process_client import EngineProcessClient

sys.path.insert(0, str(Path(__file__).parent.parent / "server"))
from live_server import API_KEY, MODEL, LiveServer, tiny_engine_args  # noqa: E402

PROMPTS = ["def add(a, b):\n    return a + b\n" * 3, "one two three one two three one two"]


def test_server_speculates_exactly_and_counts(tiny_llama_dir):
    plain = LLM(tiny_llama_dir, dtype="float32", num_kv_blocks=256, show_progress=False)
    want = [o.outputs[0].text for o in plain.generate(
        PROMPTS, SamplingParams(temperature=0, max_tokens=32, ignore_eos=True), use_tqdm=False)]
    args = tiny_engine_args(tiny_llama_dir, speculative_config='{"method": "ngram", "num_speculative_tokens": 3, '
                                                              '"prompt_lookup_min": 1, "adaptive": false}')
    client = EngineProcessClient(args)
    client.start()
    server = LiveServer(client, {"main": ServerConfig(served_model_name=MODEL, api_key=API_KEY)})
    try:
        api = server.openai()
        got = [api.completions.create(model=MODEL, prompt=p, max_tokens=32, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0].text for p in PROMPTS]
        assert got == want
        m = server.wait_idle()
        key = f'{{model_name="{MODEL}"}}'
        drafted = m[f"pagoda:spec_decode_num_draft_tokens_total{key}"]
        accepted = m[f"pagoda:spec_decode_num_accepted_tokens_total{key}"]
        assert m[f"pagoda:spec_decode_num_drafts_total{key}"] > 0 and 0 < accepted <= drafted
        assert m[f'pagoda:spec_decode_num_accepted_tokens_per_pos_total{{model_name="{MODEL}",position="0"}}'] > 0
        assert m[f"pagoda:spec_decode_acceptance_rate{key}"] == accepted / drafted
    finally:
        server.stop()
        client.shutdown()
