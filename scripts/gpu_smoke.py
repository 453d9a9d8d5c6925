"""Smoke phase of scripts/gpu_check.sh: versions, one Triton kernel against its reference, one tiny-model
generation on the GPU against the CPU. Prints one JSON line per check; exits non-zero on the first failure."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch


def say(**fields) -> None:
    print(json.dumps(fields), flush=True)


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: the dry run, under Triton's interpreter


def main() -> int:
    import triton

    import pagoda

    gpu = DEVICE == "cuda"
    say(check="versions", python=sys.version.split()[0], torch=torch.__version__, triton=triton.__version__,
        cuda=torch.version.cuda, gpu=torch.cuda.get_device_name() if gpu else None,
        capability=torch.cuda.get_device_capability() if gpu else None, pagoda=os.path.dirname(pagoda.__file__))

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "triton"))
    from paged_case import paged_case

    from pagoda.kernels.triton.attention_reference import paged_attention_reference
    from pagoda.kernels.triton.decode_attention import paged_decode_attention

    seq_lens = [1, 40, 1000]
    case = paged_case(seq_lens, [1, 1, 1], 2, 4, 128, 16, torch.float32)
    t = case.tensors(DEVICE)
    out = torch.empty(t["q"].shape, device=DEVICE)
    start = time.perf_counter()
    paged_decode_attention(out, t["q"], t["k_cache"], t["v_cache"], t["block_tables"], t["seq_lens"], 0.1,
                           max(seq_lens))
    if gpu:
        torch.cuda.synchronize()
    compile_s = time.perf_counter() - start
    ref = paged_attention_reference(case.q, case.k_cache, case.v_cache, case.block_tables, case.query_start_loc,
                                    seq_lens, 0.1)
    err = (out.cpu() - ref).abs().max().item()
    say(check="decode_kernel_fp32", max_abs_err=err, first_call_s=round(compile_s, 2), ok=err < 1e-5)
    if err >= 1e-5:
        return 1

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from tiny_models import build_tiny_model

    from pagoda import LLM, SamplingParams

    torch.backends.cuda.matmul.allow_tf32 = False
    path = build_tiny_model(tempfile.mkdtemp())
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    tokens = {}
    for name, device, backend in (("cpu", "cpu", "auto"), ("triton", DEVICE, "triton")):
        llm = LLM(path, dtype="float32", device=device, attention_backend=backend, num_kv_blocks=64, max_num_seqs=4,
                  show_progress=False)
        start = time.perf_counter()
        tokens[name] = [o.outputs[0].token_ids for o in llm.generate(["Hello world", "The quick brown"], params)]
        say(check=f"tiny_model_{name}_on_{device}", seconds=round(time.perf_counter() - start, 2), tokens=tokens[name])
    ok = tokens["cpu"] == tokens["triton"]
    say(check="tiny_model_triton_equals_cpu", ok=ok)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
