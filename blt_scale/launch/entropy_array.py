"""`blt prep entropies --slurm-parts N`: the N parts of an entropy precomputation as one SLURM job
array (one process per part), then the merge, so a corpus-sized run is one command."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from blt_scale.data.prep_entropies import EntropyPrepConfig, merge_parts, prep_entropies
from blt_scale.launch.config import LaunchConfig
from blt_scale.launch.wait import wait_jobs


def submit_entropy_parts(
    cfg: EntropyPrepConfig, parts: int, launch: LaunchConfig, folder: str | Path, parallelism: int
) -> list:
    """Submit parts 0..parts-1 of `cfg` as one array; returns the submitit jobs."""
    from blt_scale.launch.submit import submit_array

    if launch.world_size != 1:
        raise ValueError(
            f"each entropy part is one process, but the placement gives {launch.world_size} ranks: "
            "use --nodes 1 with --gpus-per-node 1 or --tasks-per-node 1"
        )
    fns = [
        partial(prep_entropies, cfg.model_copy(update={"part": i, "parts": parts}), progress=False)
        for i in range(parts)
    ]
    return submit_array(fns, launch, folder, parallelism)


def wait_and_merge(jobs: list, out: str) -> dict:
    """Wait for every part (a failed one is named with its log folder), then merge them."""
    wait_jobs(jobs, f"entropy parts, job {str(jobs[0].job_id).split('_')[0]}")
    for i, job in enumerate(jobs):
        try:
            job.result()
        except Exception as err:  # submitit raises its own job-failure types
            raise RuntimeError(
                f"entropy part {i}/{len(jobs)} (job {job.job_id}) failed: "
                f"{str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}; "
                f"logs in {job.paths.folder}"
            ) from None
    return merge_parts(out)
