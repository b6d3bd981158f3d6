"""Run the labelless command line in several gloo processes, as torchrun would start them
(``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), for the DDP tests
of the dataset commands (eval, masks generate, selftrain label)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

WORKER = textwrap.dedent("""
    import os, sys
    import torch.distributed as dist
    from labelless.cli import main
    dist.init_process_group("gloo")
    code = main(sys.argv[1:])
    dist.barrier()
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(code)  # see tests/conftest.py GLOO_EXIT: no gloo teardown, which can abort ("terminate called")
""")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(tmp_path, argv: list[str], world: int = 2, prelude: str = "", timeout: int = 180) -> list[str]:
    """``labelless <argv>`` in ``world`` gloo processes (one thread each); every rank must exit 0.

    ``prelude``: Python run in each process before the command (e.g. to record what a rank
    writes). Returns each rank's stdout + stderr, in rank order.
    """
    script = tmp_path / "rank_worker.py"
    script.write_text(textwrap.dedent(prelude) + WORKER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(world),
           "LOCAL_WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), *argv], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(world)]
    outputs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out.decode()[-3000:]
        outputs.append(out.decode())
    return outputs
