"""`pip install pagoda` serves LLMs: nothing on the LLM path imports what only the extras carry."""

from __future__ import annotations

import subprocess
import sys
import textwrap

EXTRAS_ONLY = ("diffusers", "PIL", "sklearn", "matplotlib", "jsonschema", "ray")  # [diffusion], [bench], [ray]

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {EXTRAS_ONLY!r}:
                raise ModuleNotFoundError(f"blocked: {{name}} (an extra)", name=name)
            return None

    sys.meta_path.insert(0, Block())
""")


def run_blocked(code: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_the_blocker_blocks():
    out = run_blocked("""
        try:
            import matplotlib
        except ModuleNotFoundError as e:
            print(e)
    """)
    assert "blocked: matplotlib" in out


def test_the_llm_server_and_cli_import_without_the_extras():
    out = run_blocked("""
        import pagoda.server.app, pagoda.entrypoints.llm, pagoda.server.api_server
        from pagoda.cli.main import build_parser
        build_parser()  # every subcommand's flags, `pagoda bench` ones included
        print(sorted(m for m in sys.modules if m.split(".")[0] in {extras!r}))
    """.replace("{extras!r}", repr(EXTRAS_ONLY)))
    assert out.strip() == "[]"


def test_an_llm_generates_without_the_extras(tiny_llama_dir):
    out = run_blocked("""
        from pagoda import LLM, SamplingParams
        from pagoda.server.app import build_app
        llm = LLM(sys.argv[1], dtype="float32", num_kv_blocks=16, show_progress=False)
        out = llm.generate(["hello"], SamplingParams(max_tokens=4, temperature=0), use_tqdm=False)
        print(len(out[0].outputs[0].token_ids))
    """, tiny_llama_dir)
    assert out.strip() == "4"
