"""One writer per run folder (issue 22, cases 3, 4 and 11): output_dir/.lock held by the running
training, a lock left by a dead process taken over, a refused start leaving the folder as it was,
a full disk at a checkpoint named as such."""
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from ibc_geo.engine import train
from ibc_geo.utils.run_lock import RunLock, RunLockedError
from tiny_run import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hashes(folder):
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


HOLD = """
import sys, time
from ibc_geo.utils.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def held(tmp_path):
    """output_dir ``run`` locked by another live process (as a training run holds it)."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_holder(tiny_cfg, held):
    out, proc = held
    (out / "notes.txt").write_text("the user's")
    before = hashes(out)
    for extra in ([], ["train.resume", "true"], ["train.overwrite", "true"]):
        with pytest.raises(RunLockedError) as e:
            train(tiny_cfg("train.epochs", "1", *extra))
        message = str(e.value)
        assert f"output_dir {out} is being written by another training run" in message
        assert f"pid {proc.pid} on host {socket.gethostname()}" in message
        assert hashes(out) == before


def test_two_runs_started_together_into_one_folder(tmp_path):
    out = str(tmp_path / "run")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    procs = {seed: subprocess.Popen([sys.executable, os.path.join(ROOT, "tools", "train.py"), *TINY,
                                     "train.epochs", "1", "output_dir", out, "seed", seed], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in ("1", "2")}
    results = {seed: (p.wait(timeout=600), p.stderr.read()) for seed, p in procs.items()}
    codes = sorted(code for code, _ in results.values())
    assert codes == [0, 2], results
    winner = next(seed for seed, (code, _) in results.items() if code == 0)
    loser_err = next(err for code, err in results.values() if code == 2)
    assert "being written by another training run" in loser_err or "already holds a run" in loser_err
    assert "Traceback" not in loser_err
    # everything in the folder is the winner's
    from ibc_geo.config import load_config
    from ibc_geo.engine.checkpoint import load_checkpoint

    assert load_config(os.path.join(out, "config.yaml")).seed == int(winner)
    for name in ("last.pt", "best.pt"):
        assert load_checkpoint(os.path.join(out, "checkpoints", name))["config"]["seed"] == int(winner)
    assert not os.path.exists(os.path.join(out, ".lock"))  # released at the end


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tiny_cfg, caplog):
    cfg = tiny_cfg("train.epochs", "1")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    os.makedirs(cfg.output_dir)
    with open(os.path.join(cfg.output_dir, ".lock"), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "started": time.time()}, f)
    with caplog.at_level(logging.WARNING, logger="ibc_geo"):
        train(cfg)
    assert f"pid {dead.pid} on host {socket.gethostname()}" in caplog.text and "no longer running" in caplog.text
    assert not os.path.exists(os.path.join(cfg.output_dir, ".lock"))


HOLD_AS = """
import fcntl, json, os, sys, time
os.makedirs(sys.argv[1], exist_ok=True)
fd = os.open(os.path.join(sys.argv[1], ".lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.write(fd, json.dumps({"host": sys.argv[2], "pid": int(sys.argv[3])}).encode())
print("held", flush=True)
time.sleep(120)
"""


def test_a_live_holder_is_refused_whatever_pid_its_record_names(tmp_path):
    """Only the OS lock decides: a record naming a pid that is gone here (another pid namespace, a
    container with this host name) does not let a second writer in, nor does it delete the file."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_AS, str(out), socket.gethostname(), str(dead.pid)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        before = os.stat(out / ".lock")
        for attempt in (RunLock(out).check, RunLock(out).acquire):
            with pytest.raises(RunLockedError, match=f"pid {dead.pid} on host"):
                attempt()
        assert os.path.samestat(before, os.stat(out / ".lock"))
    finally:
        proc.kill()
        proc.wait()


def test_a_forked_child_does_not_keep_the_folder_locked(tmp_path):
    """A DataLoader worker is a fork of the run: it closes its copy of the lock, so once the run
    lets go (or dies), the folder is free even while the worker lives on."""
    out = tmp_path / "run"
    lock = RunLock(out).acquire()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: outlive the parent's lock for a while
        os.close(read)
        os.write(write, b"x")
        time.sleep(5)
        os._exit(0)
    try:
        os.close(write)
        assert os.read(read, 1) == b"x"
        # The run dies (kill -9): its descriptor closes, the lock file stays.
        from ibc_geo.utils import run_lock

        run_lock._HELD.discard(lock._fd)
        os.close(lock._fd)
        lock._fd = None
        assert (out / ".lock").exists()
        again = RunLock(out).acquire()  # the child is alive and did not hold on to the lock
        again.release()
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_a_file_system_without_locks_trains_with_a_warning(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    from ibc_geo.utils import run_lock

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_lock.fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="ibc_geo"):
        RunLock(tmp_path / "run").check()
        lock = RunLock(tmp_path / "run").acquire()
    assert "does not support file locks" in caplog.text and "guard of the run folder is off" in caplog.text
    monkeypatch.setattr(run_lock.fcntl, "flock", fcntl.flock)
    lock.release()
    assert not (tmp_path / "run" / ".lock").exists()


def test_the_lock_records_host_and_pid_and_goes_at_release(tmp_path):
    lock = RunLock(tmp_path / "run").acquire()
    with open(tmp_path / "run" / ".lock") as f:
        record = json.load(f)
    assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
    lock.release()
    assert os.listdir(tmp_path / "run") == []


# 4. a refused start leaves the folder as it found it -----------------------------------------------

def test_a_refused_start_writes_nothing(tiny_cfg):
    cfg = tiny_cfg("sampler.classes_per_batch", "50")
    from ibc_geo.data import DatasetError

    with pytest.raises(DatasetError, match="sampler.classes_per_batch"):
        train(cfg)
    assert not os.path.exists(cfg.output_dir)  # not even the folder
    # the corrected command is not refused
    train(tiny_cfg("train.epochs", "1"))


def test_a_refused_overwrite_keeps_the_earlier_run(tiny_cfg):
    cfg = tiny_cfg("train.epochs", "1")
    train(cfg)
    before = hashes(cfg.output_dir)
    from ibc_geo.data import DatasetError

    with pytest.raises(DatasetError, match="sampler.classes_per_batch"):
        train(tiny_cfg("train.epochs", "1", "train.overwrite", "true", "sampler.classes_per_batch", "50"))
    assert hashes(cfg.output_dir) == before


# 3. a rank whose launcher dies stops ----------------------------------------------------------------

LAUNCHER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; from ibc_geo.utils.distributed import "
                          "watch_parent; watch_parent(0.2); print('watching', flush=True); time.sleep(120)"],
                         stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "watching"
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_rank_stops_when_its_launcher_is_killed():
    import signal

    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True)
    child = int(launcher.stdout.readline())  # its watchdog runs
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()

    def running(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
        except FileNotFoundError:
            return False

    deadline = time.time() + 10
    while time.time() < deadline:
        if not running(child):
            break
        time.sleep(0.1)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("the child outlived its launcher by 10 s")


def test_overwrite_removes_the_projector_folders_of_the_earlier_run(tiny_cfg):
    first = tiny_cfg("train.epochs", "1")
    train(first)
    steps = [d for d in os.listdir(first.output_dir) if d.isdigit()]
    assert steps and os.path.isfile(os.path.join(first.output_dir, "projector_config.pbtxt"))
    (open(os.path.join(first.output_dir, "notes.txt"), "w")).write("the user's")
    train(tiny_cfg("train.epochs", "2", "train.overwrite", "true"))
    now = [d for d in os.listdir(first.output_dir) if d.isdigit()]
    assert len(now) == 1 and now != steps  # only the new run's step folder
    assert os.path.isfile(os.path.join(first.output_dir, "notes.txt"))


def test_an_unwritable_output_dir_is_one_line_naming_it(tmp_path, capsys):
    from ibc_geo.cli import train as train_tool
    from ibc_geo.cli.common import run

    out = "/sys/ibc_geo_test_run"  # sysfs: no folder can be made there, even by root
    assert run(train_tool.main, [*TINY, "train.epochs", "1", "output_dir", out]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot create output_dir {out}: " in err and "Traceback" not in err
    assert any(cause in err for cause in ("permission denied", "operation not permitted", "read-only file system"))


def test_too_little_space_for_the_checkpoints_is_said_before_the_work(tiny_cfg, monkeypatch):
    import shutil

    from ibc_geo.utils.io import OutputError

    cfg = tiny_cfg("train.epochs", "1")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 1 << 20))
    with pytest.raises(OutputError, match=f"cannot write {cfg.output_dir}: no space left on device for the "
                                          f"checkpoints"):
        train(cfg)
    assert not os.path.exists(cfg.output_dir)


def test_a_run_that_finished_while_this_one_was_starting_is_not_overwritten(tiny_cfg, monkeypatch):
    # The other run held the lock, wrote its files and let go between this run's look at the folder
    # and its taking the lock: the start is refused, and the other run's files stay.
    import ibc_geo.engine.trainer as trainer_module
    from ibc_geo.engine import RunExistsError

    cfg = tiny_cfg("train.epochs", "1")
    original = trainer_module.Trainer._loader
    other = os.path.join(cfg.output_dir, "metrics.json")

    def the_other_run_finishes(self):
        if not os.path.exists(other):
            os.makedirs(cfg.output_dir, exist_ok=True)
            with open(other, "w") as f:
                f.write('{"the other run": true}')
        return original(self)

    monkeypatch.setattr(trainer_module.Trainer, "_loader", the_other_run_finishes)
    with pytest.raises(RunExistsError, match="was written by another run while this one was starting"):
        train(cfg)
    assert open(other).read() == '{"the other run": true}'
    assert sorted(os.listdir(cfg.output_dir)) == ["metrics.json"]
