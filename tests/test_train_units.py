"""Trainer pieces that need no rank processes: rank environment, checkpoint picking, configs, run lock."""

import socket
import subprocess
import sys

import pytest

import blt_scale.parallel.env as env_module
from blt_scale.checkpoint.layout import MARKER, latest_complete, remove_partial
from blt_scale.config import ConfigError
from blt_scale.parallel.config import ParallelConfig
from blt_scale.parallel.env import DistEnv, ephemeral_ports, first_slurm_host, free_port, read_env
from blt_scale.parallel.strategy import build_strategy
from blt_scale.train.recipe import load_recipe


def test_env_from_torchrun_then_slurm():
    tr = read_env(
        {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234"}
    )
    assert (tr.rank, tr.world_size, tr.local_rank, tr.master_addr, tr.master_port, tr.source) == (
        3,
        4,
        1,
        "h",
        1234,
        "torchrun",
    )
    sl = read_env(
        {
            "SLURM_PROCID": "5",
            "SLURM_NTASKS": "8",
            "SLURM_LOCALID": "1",
            "SLURM_JOB_NODELIST": "gpu[07-08,11],cpu3",
            "SLURM_JOB_ID": "4242",
        }
    )
    assert (sl.rank, sl.world_size, sl.local_rank, sl.master_addr, sl.source) == (5, 8, 1, "gpu07", "slurm")
    assert sl.master_port == 29500 + 4242 % 3000 < 32768  # below the ephemeral port range
    assert read_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "3299"}).master_port == 29799
    assert read_env({}) == DistEnv()


@pytest.mark.parametrize(
    "nodes, first", [("n1", "n1"), ("n[1-2]", "n1"), ("a12,b3", "a12"), ("x[003,9]", "x003")]
)
def test_first_slurm_host(nodes, first):
    assert first_slurm_host(nodes) == first


def test_free_port_lies_outside_the_ephemeral_range_and_is_free(tmp_path, monkeypatch):
    """A master port from the ephemeral range can be taken by a rank's own retrying connect()
    (TCP self-connect); the local launcher's port never lies there."""
    low, high = ephemeral_ports()
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= p < 65536 and not low <= p <= high for p in ports) and len(ports) > 1
    with socket.socket() as s:
        s.bind(("", ports.pop()))  # free: this bind would raise otherwise
    (tmp_path / "range").write_text("40000\t50000\n")
    assert ephemeral_ports(str(tmp_path / "range")) == (40000, 50000)
    assert ephemeral_ports(str(tmp_path / "missing")) == (32768, 60999)
    # a range that leaves no port outside it: the kernel's choice, not an error
    monkeypatch.setattr(env_module, "ephemeral_ports", lambda: (1024, 65535))
    assert 1024 <= free_port() <= 65535


def test_latest_complete_ignores_partial_checkpoints(tmp_path):
    root = tmp_path / "checkpoints"
    for name, marked in [
        ("step_000004", True),
        ("step_000008", True),
        ("step_000010", False),
        ("step_000012.tmp", False),
    ]:
        (root / name).mkdir(parents=True)
        if marked:
            (root / name / MARKER).write_text("")
    (root / "step_000012.tmp" / MARKER).write_text("")  # a marker inside a temp dir does not count
    assert latest_complete(tmp_path).name == "step_000008"
    assert sorted(p.name for p in remove_partial(tmp_path)) == ["step_000010", "step_000012.tmp"]
    assert sorted(p.name for p in root.iterdir()) == ["step_000004", "step_000008"]


def test_strategy_errors_name_the_key():
    with pytest.raises(ConfigError, match="parallel.strategy=fsdp"):
        build_strategy(ParallelConfig(strategy="none"), DistEnv(world_size=2), "cpu")
    with pytest.raises(ConfigError, match="parallel.zero_stage=0"):
        build_strategy(ParallelConfig(strategy="deepspeed", zero_stage=0), DistEnv(), "cpu")
    with pytest.raises(ConfigError, match="parallel.cpu_offload"):
        load_recipe("cpu_tiny", ["parallel.cpu_offload=true"])


def test_micro_batch_unset_means_no_accumulation_and_bad_splits_name_the_keys():
    unset = load_recipe("cpu_tiny").train  # global_batch 8, no micro_batch
    assert unset.micro_batch is None
    assert [(unset.micro_batch_for(w), unset.accumulation_for(w)) for w in (1, 2, 4, 8)] == [
        (8, 1),
        (4, 1),
        (2, 1),
        (1, 1),
    ]
    with pytest.raises(ConfigError) as err:
        unset.micro_batch_for(3)
    assert str(err.value) == (
        "train.global_batch (8) must be a multiple of the world size (3) when train.micro_batch "
        "is unset (no accumulation: global_batch / world size per rank)"
    )
    two = load_recipe("cpu_tiny", ["train.micro_batch=2"]).train
    assert [(two.micro_batch_for(w), two.accumulation_for(w)) for w in (1, 2, 4)] == [(2, 4), (2, 2), (2, 1)]
    with pytest.raises(ConfigError) as err:
        two.micro_batch_for(8)
    assert str(err.value) == (
        "train.global_batch (8) must be a multiple of train.micro_batch (2) x world size (8); "
        "or unset train.micro_batch (train.micro_batch=null) for global_batch / world size "
        "per rank, without accumulation"
    )
    with pytest.raises(ConfigError, match=r"train.micro_batch \(2\) x world size \(3\)$"):
        two.micro_batch_for(3)  # no hint: unsetting it would not help
    assert (
        "unset = global_batch / world size (no accumulation)"
        in type(unset).model_fields["micro_batch"].description
    )


def test_a_trainer_that_fails_after_locking_releases_the_run_directory(tmp_path):
    from blt_scale.train.loop import Trainer

    run_dir = tmp_path / "run"
    missing = tmp_path / "no_such_dataset"
    cfg = load_recipe(
        "cpu_tiny", [f"data.sources=[{{uri: {missing}}}]", "wandb.enabled=false", f"run_dir={run_dir}"]
    )
    with pytest.raises(FileNotFoundError, match="no_such_dataset"):
        Trainer(cfg, DistEnv(), resume="never")
    assert (run_dir / ".lock").is_file()  # the lock was taken: the failure came after it
    # and given back: another process (POSIX locks are per process) can take it now
    take = f"from blt_scale.train.run_lock import RunLock; RunLock({str(run_dir)!r})"
    other = subprocess.run([sys.executable, "-c", take], capture_output=True, text=True)
    assert other.returncode == 0, other.stderr[-2000:]


def test_progress_line_eta_is_unknown_on_the_first_row_and_zero_on_the_last(tmp_path, capsys):
    from blt_scale.train.metrics import MetricsLogger

    logger = MetricsLogger(tmp_path, total_steps=5, enabled=True)
    row = {"loss": 1.0, "bpb": 1.44, "lr": 1e-3, "bytes_per_s": 100.0, "mfu": 0.1}
    for step in (1, 3, 5):
        logger.log({"step": step, **row})
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" eta ")[1] for line in lines][::2] == ["?", "0s"] and "nan" not in "".join(lines)
    last_resumed = MetricsLogger(tmp_path, total_steps=5, enabled=True)  # a resume at the last step
    last_resumed.log({"step": 5, **row})
    assert capsys.readouterr().err.strip().endswith("eta 0s")
