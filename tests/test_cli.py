"""Every command-line program answers a user's mistake with one readable line and exit status 2, and
leaves no traceback (those are for bugs); `--verbose` shows it anyway."""

from __future__ import annotations

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_LINE = re.compile(r"[IWEF]\d{4} ")  # absl's log lines (progress); the rest is what the user reads.


def _run_all(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Runs the commands side by side (each is mostly Python start-up), returns their results."""
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = {name: subprocess.Popen([sys.executable, *args], cwd=REPO, **pipes) for name, args in commands.items()}
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return out


def test_user_errors_are_one_line_with_exit_status_2(tmp_path):
    data = tmp_path / "data"
    main = ["-m", "avcanet_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path / 'w'}"]
    expected = {
        "misspelt config field": (
            [*main, "--config.batch_sizee=4"],
            "avcanet_jax.main: error: --config.batch_sizee: no such config field 'batch_sizee' (Did you mean",
        ),
        "bad config value": ([*main, "--config.batch_size=four"], "--config.batch_size=four: invalid literal"),
        "unknown flag": ([*main, "--workdirr=x"], "Unknown command line flag 'workdirr'. Did you mean: workdir"),
        "missing config file": (
            ["-m", "avcanet_jax.main", "--config=configs/nope.py", "--workdir=w"],
            "avcanet_jax.main: error: --config=configs/nope.py: no such file",
        ),
        "unknown dataset": (
            [*main, "--config.data.dataset=emotions/fulll"],
            "config.data.dataset: 'emotions/fulll' has no config 'fulll'",
        ),
        "evaluation of a workdir that does not exist": (
            [*main, "--mode=eval", "--config.data.dataset=emotions/full"],
            f"avcanet_jax.main: error: {tmp_path / 'w'} holds no checkpoints (is it a training workdir?)",
        ),
        "build without its manual dir": (
            ["-m", "tfds_emotions.build", "--config=full", f"--data_dir={data}"],
            "tfds_emotions.build: error: --manual_dir is required",
        ),
        "build of an unknown dataset": (
            ["-m", "tfds_emotions.build", "--dataset=emotion", f"--data_dir={data}"],
            "--dataset=emotion: not a dataset of this package",
        ),
        "protocol run that does not exist": (
            ["-m", "avcanet_jax.protocol", "--config=configs/ekman6.py", f"--workdir={tmp_path}", "--only=seed9"],
            "avcanet_jax.protocol: error: --only: unknown runs ['seed9']",
        ),
        "aot with a bad mesh": (
            ["-m", "avcanet_jax.aot", "--config=configs/demo.py", "--topology=v5e:2x2", "--config.mesh.axes.data=3"],
            "avcanet_jax.aot: error: config.mesh.axes",
        ),
        "import of a file that does not exist": (
            ["-m", "avcanet_jax.import_weights", "--swin=nope.pth", f"--out={tmp_path}"],
            "error: --swin=nope.pth: no such file",
        ),
    }
    results = _run_all({name: args for name, (args, _) in expected.items()})
    for name, (_, message) in expected.items():
        proc = results[name]
        said = [line for line in proc.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
        assert proc.returncode == 2, (name, proc.stderr[-3000:])
        assert len(said) <= 2 and message in said[-1], (name, said)  # argparse adds its usage line.
        assert "Traceback" not in proc.stderr, name
    assert not data.exists() or not any(data.iterdir())  # The refused builds left nothing behind,
    assert not (tmp_path / "w").exists()  # nor the refused evaluation.


def test_verbose_shows_the_traceback_of_a_user_error(tmp_path):
    cmd = ["-m", "avcanet_jax.main", "--config=configs/demo.py", f"--workdir={tmp_path}", "--verbose",
           "--config.data.dataset=emotions/fulll"]  # fmt: skip
    proc = _run_all({"verbose": cmd})["verbose"]
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
