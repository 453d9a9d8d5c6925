"""Two hosts simulated on loopback: node 0 is the engine, node 1 a separate launch; they rendezvous."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from test_tensor_parallel import GREEDY, PROMPTS, assert_same


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair")


@pytest.mark.parametrize("tp", [1, 2], ids=["pp2", "tp2pp2"])
def test_pp2_across_two_launches(tiny_llama_dir, make_llm, tp):
    """Stage 1 on the other host; the driver runs a step ahead of it (two virtual engines), its
    messages sent point to point."""
    reference = make_llm(tiny_llama_dir).generate(PROMPTS, GREEDY, use_tqdm=False)
    port = _free_port_pair()
    node1 = subprocess.Popen([sys.executable, "-m", "pagoda.distributed.node", "--node-rank", "1",
                              "--master-addr", "127.0.0.1", "--master-port", str(port), "--timeout-s", "60"])
    try:
        llm = make_llm(tiny_llama_dir, tensor_parallel_size=tp, pipeline_parallel_size=2, nnodes=2,
                       master_port=port)
        assert llm.engine.runner.num_virtual_engines == 2
        assert_same(reference, llm.generate(PROMPTS, GREEDY, use_tqdm=False))
        stats = llm.engine.runner.stats()
        assert len(stats.busy_s) == 2 * tp
        llm.shutdown()
        assert node1.wait(timeout=30) == 0  # the engine's shutdown ends the other host's ranks
    finally:
        if node1.poll() is None:
            node1.kill()
            node1.wait()
