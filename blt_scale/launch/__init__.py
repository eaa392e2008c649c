"""Launching on SLURM with submitit: `submit`/`resume` one run, `submit_runs`/`submit_array` for
job arrays, the per-task runner that requeues on the trainer's stop code, and `blt status`."""
