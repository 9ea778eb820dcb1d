"""Where this process sits in the job: rank, world size, local rank, master address.

Read from a plain mapping (``os.environ`` in production, a dict in tests) so it is testable
without launching anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> DistEnv:
        """torchrun / accelerate / deepspeed set RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE."""
        world = int(env.get("WORLD_SIZE", "1"))
        return cls(
            rank=int(env.get("RANK", "0")),
            world_size=world,
            local_rank=int(env.get("LOCAL_RANK", "0")),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", str(world))),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", "29500")),
        )


def torch_env_from_slurm(environ: Mapping[str, str]) -> dict[str, str]:
    """Inside an srun task started by our batch script (``LAUNCHER_SLURM=1``): the SLURM_*
    variables -> what torch.distributed and DeepSpeed read. Empty anywhere else."""
    if environ.get("LAUNCHER_SLURM") != "1" or "SLURM_PROCID" not in environ:
        return {}
    ntasks = int(environ.get("SLURM_NTASKS", "1"))
    nodes = int(environ.get("SLURM_NNODES", environ.get("SLURM_JOB_NUM_NODES", "1")))
    return {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": str(ntasks),
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
        "LOCAL_WORLD_SIZE": str(max(1, ntasks // max(1, nodes))),
        "GROUP_RANK": environ.get("SLURM_NODEID", "0"),
    }
