"""The `flowact` command line as a user runs it: real processes on the real Redis."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

FLOWACT = [sys.executable, "-m", "flowact"]


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*FLOWACT, *args], capture_output=True, text=True, timeout=60, **kw)


def test_help_lists_the_commands() -> None:
    done = run("--help")
    assert done.returncode == 0
    for command in ("inject", "tail", "bench", "serve"):
        assert command in done.stdout


@pytest.mark.redis
def test_inject_then_tail(redis_url: str, session_id: str) -> None:
    tail = subprocess.Popen(
        [*FLOWACT, "tail", session_id, "--bus", redis_url, "--from-start"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        done = run(
            "inject",
            session_id,
            "waves with the right hand",
            "--duration",
            "1.5",
            "--bus",
            redis_url,
        )
        assert done.returncode == 0, done.stderr
        entry_id = done.stdout.strip()
        import redis

        client = redis.Redis.from_url(redis_url)
        [(got_id, fields)] = client.xrange(f"flowact:{session_id}:behavior")
        assert got_id.decode() == entry_id
        assert fields[b"text"] == b"waves with the right hand"
        assert fields[b"duration_frames"] == b"38"
        client.xadd(
            f"flowact:{session_id}:events", {"type": "state", "state": "speaking", "actor": "agent"}
        )
        line = json.loads(tail.stdout.readline())
        assert line["type"] == "state" and line["state"] == "speaking"
    finally:
        tail.terminate()
        tail.wait(10)


def test_inject_refuses_a_bad_channel_and_names_it() -> None:
    done = run("inject", "s", "nods", "--channel", "legs", "--bus", "memory://")
    assert done.returncode == 2
    assert "legs" in done.stderr and "posture" in done.stderr


def test_compose_services_run_real_commands() -> None:
    compose = yaml.safe_load((Path(__file__).parents[1] / "docker-compose.yml").read_text())
    services = compose["services"]
    assert "--appendonly" in services["redis"]["command"]
    gpu = services["renderer"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert "gpu" in gpu["capabilities"]
    env = {**os.environ, "FLOWACT_LOG_LEVEL": "error"}
    for name in ("renderer", "agent"):
        command = services[name]["command"]
        assert command[0] == "flowact"
        # Every option the service passes must be one its command accepts.
        helped = run(*command[1:3], "--help", env=env)
        assert helped.returncode == 0, helped.stderr
        for option in (a for a in command[3:] if a.startswith("--")):
            assert option in helped.stdout, f"{name}: {option} is not an option of {command[:3]}"
    time.sleep(0)


def test_every_command_the_readme_shows_exists() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    shown = set(re.findall(r"`flowact ((?:[a-z]+ )*[a-z]+)(?: [A-Z\[\-]|`)", readme))
    assert {"inject", "tail", "bench bus", "bench renderer", "serve renderer"} <= shown
    for command in sorted(shown):
        done = run(*command.split(), "--help")
        assert done.returncode == 0, f"README shows `flowact {command}`: {done.stderr}"


def test_train_run_names_a_bad_start_before_it_trains(tmp_path: Path) -> None:
    wide = {**os.environ, "COLUMNS": "400"}  # the error box would wrap the long path
    done = run(
        "train", "run", "--data", str(tmp_path / "none"), "--workdir", str(tmp_path / "w"), env=wide
    )
    assert done.returncode == 2 and "lacks speech_train.npz" in done.stderr
    assert not (tmp_path / "w").exists()
    module = [sys.executable, "-m", "flowact.renderer.training.pipeline", "run"]
    args = ["--data", str(tmp_path / "none"), "--workdir", str(tmp_path / "w")]
    done = subprocess.run([*module, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "lacks speech_train.npz" in done.stderr


def test_train_run_takes_any_curriculum_setting_by_set(tmp_path: Path) -> None:
    """`--set FIELD=VALUE` reaches the pipeline's config in the field's type: a value the run
    refuses is refused by name, before any training, as are a wrong field, type or form."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("speech_train.npz", "speech_eval.npz", "text_table.pt"):
        (data / name).touch()
    wide = {**os.environ, "COLUMNS": "400"}
    base = ("train", "run", "--data", str(data), "--workdir", str(tmp_path / "w"))
    cases = {
        "prompt-mix=2": "prompt_mix must be within [0, 1], not 2.0",
        "vae_control_gains=smile=8": "give it a vae_control_weight > 0",
        "stage2_seconds=soon": "stage2_seconds takes float, not 'soon'",
        "probe_continue=maybe": "probe_continue is true or false, not 'maybe'",
        "stage9_seconds=1": "'stage9_seconds' is not a setting of the pipeline",
        "latent_clips": "'latent_clips' is not FIELD=VALUE",
        "workdir=elsewhere": "workdir has its own option: --workdir",
    }
    for setting, message in cases.items():
        done = run(*base, "--set", "seed=3", "--set", setting, env=wide)
        assert done.returncode == 2, setting
        assert message in " ".join(done.stderr.split()), (setting, done.stderr)
    assert not (tmp_path / "w").exists()
