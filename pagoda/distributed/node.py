"""`python -m pagoda.distributed.node --node-rank K --master-addr HOST --master-port PORT`: the
worker ranks of one host other than node 0 in a multi-host layout.

Node 0 runs the engine (``pagoda serve`` / ``LLM(...)`` with ``nnodes`` and ``master_port``); it
publishes the ranks' spec (model, layout, cache) in a store on ``master_port + 1``, so a launcher
needs only where node 0 is. torchrun's variables (``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK``)
fill in flags that are not given. Exits when the engine shuts its ranks down.
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from datetime import timedelta

import torch.distributed as dist

from pagoda.distributed.worker import SPEC_KEY, WorkerSpec, create_node_segments, node_shm_name


def run_node(node_rank: int, master_addr: str, master_port: int, timeout_s: float = 300.0) -> int:
    store = dist.TCPStore(master_addr, master_port + 1, is_master=False, timeout=timedelta(seconds=timeout_s))
    template: WorkerSpec = pickle.loads(store.get(SPEC_KEY))
    p = template.parallel
    if not 0 < node_rank < p.nnodes:
        raise ValueError(f"node rank {node_rank} is not in 1..{p.nnodes - 1}")
    name = node_shm_name(master_port, node_rank)
    segments = create_node_segments(name, p, template.model_config, node_rank)
    error_dir = tempfile.mkdtemp(prefix="pagoda-ranks-")
    procs = []
    try:
        for rank in p.local_ranks(node_rank):
            spec = replace(template, rank=rank, shm_name=name, error_path=os.path.join(error_dir, f"rank{rank}.err"))
            proc = subprocess.Popen([sys.executable, "-m", "pagoda.distributed.worker"], stdin=subprocess.PIPE)
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps(spec))
            proc.stdin.close()
            procs.append(proc)
        codes = [proc.wait() for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for path in segments:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    for rank, code in zip(p.local_ranks(node_rank), codes, strict=True):
        path = os.path.join(error_dir, f"rank{rank}.err")
        if code and os.path.exists(path):
            print(f"rank {rank} failed:\n{open(path).read()}", file=sys.stderr)
    shutil.rmtree(error_dir, ignore_errors=True)
    return max(codes, default=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pagoda.distributed.node", description=__doc__)
    parser.add_argument("--node-rank", type=int, default=int(os.environ.get("NODE_RANK", "1")))
    parser.add_argument("--master-addr", default=os.environ.get("MASTER_ADDR", "127.0.0.1"))
    parser.add_argument("--master-port", type=int, default=int(os.environ.get("MASTER_PORT", "29500")))
    parser.add_argument("--timeout-s", type=float, default=300.0, help="how long to wait for node 0")
    args = parser.parse_args(argv)
    return run_node(args.node_rank, args.master_addr, args.master_port, args.timeout_s)


if __name__ == "__main__":
    sys.exit(main())
