"""`uplift-diffusion train` never loses the user's files or silently does something else than asked:
--overwrite deletes only what a run wrote, --resume with an edited config applies or refuses every change (and the
run's record says what happened), outputs get ordinary file modes, config values of the wrong type and unreadable
training images are refused before any work, in one line naming the file."""

import csv
import json
import os
import shutil
import stat

import pytest
from training_helpers import tiny_config, tiny_taef2, write_images

from uplift_diffusion.cli import main


def _make_setup(root):
    write_images(root / "images", count=3)
    tiny_taef2().save_pretrained(root / "taef2")
    return root


@pytest.fixture
def setup(tmp_path):
    return _make_setup(tmp_path)


def _write_config(setup, name="train.json", **overrides):
    settings = {"max_steps": 2, "checkpoint_every": 1, **overrides}
    path = setup / name
    path.write_text(json.dumps(tiny_config(setup, setup / "images", **settings).to_dict()))
    return path


@pytest.fixture(scope="module")
def _first_run(tmp_path_factory):
    """A ``setup`` folder after one ``train`` of the default config, and a copy of it as it was then."""
    root = tmp_path_factory.mktemp("first_run")
    setup = _make_setup(root / "setup")
    assert main(["train", "--config", str(_write_config(setup))]) == 0
    shutil.copytree(setup, root / "as_trained", symlinks=True)
    return setup, root / "as_trained"


@pytest.fixture
def trained(_first_run):
    """``setup`` with a finished run of its ``train.json`` in ``run/``: the first run's folder restored to how that
    run left it, at the same path (the run records its paths), rather than one more training per test."""
    setup, as_trained = _first_run
    shutil.rmtree(setup)
    shutil.copytree(as_trained, setup, symlinks=True)
    return setup


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("uplift-diffusion train: error:") and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------- item: --overwrite keeps the user's files
def test_overwrite_never_deletes_files_that_no_run_wrote(setup, capsys):
    folder = setup / "d"
    (folder / "photos").mkdir(parents=True)
    (folder / "photos" / "cat.jpg").write_bytes(b"not really a cat")
    (folder / "precious.txt").write_text("precious")
    path = _write_config(setup, output_dir=str(folder))

    for extra in ([], ["--overwrite"]):
        assert main(["train", "--config", str(path), *extra]) == 2
        err = _one_line_error(capsys)
        assert "precious.txt" in err and "photos" in err
        assert "a run" not in err and "--overwrite" not in err  # they are the user's files, not a run
        assert (folder / "precious.txt").read_text() == "precious" and (folder / "photos" / "cat.jpg").is_file()
        assert not (folder / "checkpoints").exists()


def test_overwrite_replaces_a_run_and_only_its_files(trained, capsys):
    path = trained / "train.json"
    run = trained / "run"
    (run / "my_notes.txt").write_text("keep me")  # the user's file beside the run's
    capsys.readouterr()

    assert main(["train", "--config", str(path), "--max-steps", "1"]) == 2
    assert "--overwrite" in _one_line_error(capsys)  # a run it is: replacing it is allowed with the flag
    assert main(["train", "--config", str(path), "--overwrite", "--max-steps", "1"]) == 0
    assert (run / "my_notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-00000001"]


def test_overwrite_keeps_the_users_files_inside_the_runs_folders(trained, capsys):
    path = trained / "train.json"
    run = trained / "run"
    (run / "previews" / "selected").mkdir()
    (run / "previews" / "selected" / "best.png").write_bytes(b"mine")
    (run / "checkpoints" / "keep").mkdir()
    (run / "checkpoints" / "keep" / "weights.safetensors").write_bytes(b"mine")
    (run / "tensorboard").mkdir(exist_ok=True)  # (made by the run when tensorboard is installed)
    (run / "tensorboard" / "notes.md").write_text("mine")
    assert main(["train", "--config", str(path), "--overwrite", "--max-steps", "1"]) == 0
    for kept in ("previews/selected/best.png", "checkpoints/keep/weights.safetensors", "tensorboard/notes.md"):
        assert (run / kept).is_file(), kept
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint-00000001", "keep"]
    assert sorted(p.name for p in (run / "previews").iterdir()) == ["selected", "step-00000001.png"]

    # the run replaces model/ as a whole when it ends: a file of the user's there is refused, not lost
    (run / "model" / "README.md").write_text("my model card")
    capsys.readouterr()
    for extra in (["--overwrite"], ["--resume", "--max-steps", "3"]):
        assert main(["train", "--config", str(path), *extra]) == 2
        assert "model/README.md" in _one_line_error(capsys)
        assert (run / "model" / "README.md").read_text() == "my model card"


# ---------------------------------------------------------------- item: --resume with an edited config
def _log(run):
    with open(run / "loss_log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_resume_applies_a_new_learning_rate_and_records_it(trained, capsys):
    path = trained / "train.json"
    run = trained / "run"
    recorded = json.loads((run / "train_config.json").read_text())
    data = json.loads(path.read_text())
    data["optim"]["lr"] = 5e-4
    path.write_text(json.dumps(data))
    capsys.readouterr()

    assert main(["train", "--config", str(path), "--resume", "--max-steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr" in out and "0.0005" in out  # said, not silent
    rows = _log(run)
    assert [float(r["lr"]) for r in rows] == [1e-3, 1e-3, 5e-4]  # applied from step 3 on
    # the record still says what the first two steps used, and when the change happened
    assert json.loads((run / "train_config.json").read_text()) == recorded
    changes = json.loads((run / "run.json").read_text())["changes"]
    assert changes == [{"step": 2, "changed": {"optim.lr": [1e-3, 5e-4], "max_steps": [2, 3]}}]


@pytest.mark.parametrize("edit, keys", [
    (lambda d: d["model"]["overrides"].update(noise_channels=3), "model.overrides"),
    (lambda d: d["data"].update(crop_size=64), "data.crop_size"),
    (lambda d: d["optim"].update(scheduler="cosine"), "optim.scheduler"),
])
def test_resume_refuses_what_cannot_change(trained, capsys, edit, keys):
    path = trained / "train.json"
    run = trained / "run"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    capsys.readouterr()

    assert main(["train", "--config", str(path), "--resume"]) == 2
    err = _one_line_error(capsys)
    assert keys in err and "cannot change" in err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing touched


# ---------------------------------------------------------------- item: ordinary file modes
def test_every_output_has_the_modes_of_an_ordinary_file(setup):
    path = _write_config(setup)
    old = os.umask(0o022)
    try:
        assert main(["train", "--config", str(path)]) == 0
    finally:
        os.umask(old)
    files = [p for p in (setup / "run").rglob("*") if p.is_file()]
    assert any(p.name == "diffusion_pytorch_model.safetensors" for p in files)
    assert any(p.name == "model.safetensors" for p in files)
    modes = {p.relative_to(setup).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    folders = {oct(stat.S_IMODE(p.stat().st_mode)) for p in (setup / "run").rglob("*") if p.is_dir()}
    assert folders == {"0o755"}


# ---------------------------------------------------------------- item: config values of the wrong type
@pytest.mark.parametrize("bad, message", [
    ({"batch_size": "8"}, r"batch_size must be an integer, got '8' \(str\)"),
    ({"batch_size": 2.5}, r"batch_size must be an integer, got 2.5 \(float\)"),
    ({"batch_size": True}, r"batch_size must be an integer, got True \(bool\)"),
    ({"optim": {"lr": "fast"}}, r"optim.lr must be a number, got 'fast' \(str\)"),
    ({"data": {"hflip": "no"}}, r"data.hflip must be true or false, got 'no' \(str\)"),
    ({"loss": {"depths": [1, "2"]}}, r"loss.depths\[1\] must be an integer, got '2' \(str\)"),
    ({"data": {"sources": [{"type": "folder", "path": 3}]}}, r"data.sources\[0\].path must be a string, got 3"),
    ({"model": {"overrides": ["in_channels"]}}, r"model.overrides must be a mapping, got \['in_channels'\]"),
])
def test_values_of_the_wrong_type_name_file_key_type_and_value(tmp_path, capsys, bad, message):
    _assert_config_refused(tmp_path, capsys, bad, message)


@pytest.mark.parametrize("bad, message", [
    ({"data": {"crop_size": -64}}, r"data.crop_size must be in \[16, 2048\], got -64"),
    ({"data": {"crop_size": 4096}}, r"data.crop_size must be in \[16, 2048\], got 4096 \(.*memory"),
    ({"optim": {"lr": float("nan")}}, r"optim.lr must be in \(0, 10\], got nan"),
    ({"optim": {"betas": [1.5, 0.9]}}, r"optim.betas\[0\] must be in \[0, 1\), got 1.5"),
    ({"seed": -1}, r"seed must be in \[0, 4294967295\], got -1"),
    ({"max_minutes": float("inf")}, r"max_minutes must be in \(0, 525600\], got inf"),
    ({"data": {"num_workers": -2}}, r"data.num_workers must be in \[0, 256\], got -2"),
    ({"loss": {"noise_sigma": float("nan")}}, r"loss.noise_sigma must be in \[0, 1000.0\], got nan"),
])
def test_values_out_of_range_are_refused_before_any_work(tmp_path, capsys, bad, message):
    _assert_config_refused(tmp_path, capsys, bad, message)


def _assert_config_refused(tmp_path, capsys, bad: dict, message: str) -> None:
    """``train`` with a config holding ``bad`` exits 2 with one line naming the file and matching ``message``."""
    import re

    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"max_steps": 5, **bad}))
    assert main(["train", "--config", str(path)]) == 2
    err = _one_line_error(capsys)
    assert str(path) in err and re.search(message, err), err


@pytest.mark.parametrize("name, text", [("bad.json", '{"max_steps": 5,}'), ("bad.yaml", "max_steps: [5\n"),
                                        ("bad.toml", "max_steps = \n")])
def test_a_malformed_config_file_is_named(tmp_path, capsys, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert main(["train", "--config", str(path)]) == 2
    assert str(path) in _one_line_error(capsys)


# ---------------------------------------------------------------- item: unreadable training images
def test_unreadable_training_images_are_refused_before_step_one(setup, capsys):
    (setup / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (setup / "images" / "sub" / "notes.jpg").write_text("this is text")
    path = _write_config(setup, max_steps=6)
    assert main(["train", "--config", str(path)]) == 2
    err = _one_line_error(capsys)
    assert "broken.png" in err and "notes.jpg" in err and "2 " in err
    assert not (setup / "run" / "checkpoints").exists()


# ---------------------------------------------------------------- item: a crop size the photos cannot fill
def test_a_crop_size_most_photos_cannot_fill_is_refused_naming_the_sizes(setup, capsys):
    path = _write_config(setup, data={**json.loads(_write_config(setup).read_text())["data"], "crop_size": 128})
    assert main(["train", "--config", str(path)]) == 2
    err = _one_line_error(capsys)
    assert "data.crop_size 128" in err and "(56x40)" in err and "at most 40" in err, err
    assert not (setup / "run" / "checkpoints").exists()


def test_a_crop_size_a_few_photos_cannot_fill_is_said(setup):
    from PIL import Image

    from uplift_diffusion.training.data import ViewDataset

    Image.new("RGB", (30, 20)).save(setup / "images" / "small.png")
    config = tiny_config(setup, setup / "images").data
    with pytest.warns(UserWarning, match=r"1 of 4 training photo\(s\) have a short side below data.crop_size 32 "
                                         r"\(images/small.png \(30x20\)\)"):
        ViewDataset.from_config(config, levels=2, seed=0)


# ---------------------------------------------------------------- item: a user error on N processes stays one line
def test_train_on_two_processes_ends_a_user_error_in_one_line(setup):
    """`train --num-processes 2` starts the workers itself (torch's elastic launcher, as `accelerate launch` does): a
    user error in the workers is one line and exit code 2, not followed by the launcher's ChildFailedError traceback;
    a good config trains on both processes."""
    import subprocess
    import sys

    (setup / "images" / "broken.png").write_bytes(b"not an image")
    path = _write_config(setup, max_steps=1, batch_size=2)
    command = [sys.executable, "-m", "uplift_diffusion.cli", "train", "--config", str(path), "--num-processes", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("uplift-diffusion train: error: 1 training image(s) cannot be read") and \
        "broken.png" in lines[0]

    (setup / "images" / "broken.png").unlink()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trained model saved to") == 1
    assert json.loads((setup / "run" / "model" / "config.json").read_text())["in_channels"] == 4


def _truncated_jpeg(path) -> None:
    """A JPEG whose header is whole (it passes the check before step one) and whose pixels stop halfway."""
    import numpy as np
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_photo_one_worker_cannot_read_mid_run_is_one_line_not_the_other_workers_traceback(setup):
    """The worker that reads the truncated photo stops on a user error; the other one fails in its collective (a
    peer left): the user sees the cause alone."""
    import subprocess
    import sys

    _truncated_jpeg(setup / "images" / "cut.jpg")
    path = _write_config(setup, max_steps=2, batch_size=2)
    command = [sys.executable, "-m", "uplift_diffusion.cli", "train", "--config", str(path), "--num-processes", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip() and "training" not in line]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("uplift-diffusion train: error: cannot read image") and "cut.jpg" in lines[0]


# ---------------------------------------------------------------- item: one run per folder, workers end with it
def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_until(condition, timeout: float, proc=None) -> None:
    import threading
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        assert proc is None or proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        threading.Event().wait(0.1)

def _start_two_process_run(setup):
    """``train --num-processes 2`` of a long run in a child process, once its first step is logged; returns the
    process and the config's path. (A bound, not a wait: start-up takes ~20 s idle, minutes on a loaded machine.)"""
    import subprocess
    import sys

    path = _write_config(setup, max_steps=100000, batch_size=2, checkpoint_every=100000)
    command = [sys.executable, "-m", "uplift_diffusion.cli", "train", "--config", str(path), "--num-processes", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    log = setup / "run" / "loss_log.csv"
    try:
        _wait_until(lambda: log.is_file() and len(log.read_text().splitlines()) > 1, 300, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, path



@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
def test_a_killed_launcher_takes_its_workers_and_a_second_run_is_refused_while_one_runs(setup, capsys):
    """SIGKILL of `train --num-processes 2` leaves no worker training on; while a run holds its folder, a second
    `train` / `--resume` into it is refused in one line."""
    import signal

    proc, path = _start_two_process_run(setup)
    try:
        workers = _children(proc.pid)
        assert len(workers) == 2

        for extra in (["--resume"], ["--overwrite"]):  # (--max-steps 1: a run that is let in ends at once)
            assert main(["train", "--config", str(path), *extra, "--max-steps", "1"]) == 2
            err = _one_line_error(capsys)
            assert "in use by another `train`" in err and str(proc.pid) in err

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        _wait_until(lambda: not any(_alive(w) for w in workers), 20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    from uplift_diffusion.training.run import RunFolderLock

    with RunFolderLock(setup / "run"):  # the kernel released the dead launcher's lock
        pass


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
def test_a_worker_killed_by_the_kernel_is_one_line_naming_the_log(setup):
    """A worker ended by SIGKILL (what the kernel does out of memory): one line naming the signal and the log file
    that holds every process's report, exit code 1."""
    import re
    import signal

    proc, path = _start_two_process_run(setup)
    try:
        os.kill(max(_children(proc.pid)), signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "training" not in line]
    assert proc.returncode == 1 and len(lines) == 1, err
    match = re.fullmatch(r"uplift-diffusion train: error: process \d was killed by SIGKILL \(out of memory\?.*\); "
                         r"every process's traceback is in (\S+\.log)", lines[0])
    assert match and "SIGKILL" in open(match[1]).read(), lines[0]
    os.unlink(match[1])


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table from /proc")
def test_sigterm_of_a_two_process_run_is_one_line(setup):
    import signal

    proc, path = _start_two_process_run(setup)
    try:
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "training" not in line]
    assert proc.returncode == 128 + signal.SIGTERM and lines == ["uplift-diffusion train: interrupted (SIGTERM)"], err
    assert not any(_alive(w) for w in workers)
