"""Worker processes: they stop with their parent, even when it is SIGKILLed, without leaked
semaphores (issue 16, item 8); and a script without a main guard fails at once, saying to add one,
instead of hanging (item 14)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fusionkit.data.parallel import run_jobs
from fusionkit.data.video import write_video

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _children(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be collected


def _run_script(tmp_path: Path, code: str, **kwargs) -> subprocess.Popen:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _long_videos(root: Path, n: int = 2, frames: int = 400) -> None:
    """Videos whose farneback flow takes seconds (about 23 ms a pair at 320x240 on one core)."""
    y, x = np.mgrid[0:240, 0:320]
    grey = [(127 + 100 * np.sin((x + 3 * t) / 9) * np.cos(y / 13)).astype(np.uint8) for t in range(frames)]
    clip = np.repeat(np.stack(grey)[..., None], 3, -1)
    for i in range(n):
        write_video(root / "A" / f"v_{i}.avi", clip)


@linux_only
def test_killing_the_main_process_leaves_no_worker_running(tmp_path):
    """SIGKILL the main process while both workers are busy with a long video: they end at once
    (a worker that only noticed when it next wrote its result would run on for seconds), and no
    "leaked semaphore" warning is printed by multiprocessing's resource tracker."""
    _long_videos(tmp_path / "videos")
    log = (tmp_path / "stderr.txt").open("w")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        from fusionkit.data.flow import extract_flow

        if __name__ == "__main__":
            extract_flow({str(tmp_path / 'videos')!r}, {str(tmp_path / 'cache')!r}, backend="farneback", workers=2,
                         progress=False)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline, workers = time.monotonic() + 120, []
        while len(workers) < 2:
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "the workers never started"
            workers = [c for c in _children(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
            time.sleep(0.02)
        time.sleep(1.5)  # both are decoding or computing flow now: each job takes several seconds
        assert not list((tmp_path / "cache").glob("*/*/meta.json")), "the jobs were too short for this test"
        children = _children(proc.pid)  # the workers and multiprocessing's resource tracker
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 3
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = [c for c in children if _alive(c)]
        assert not left, f"still running 3 s after the main process was killed: {left}"
    finally:
        _kill_group(proc)
        proc.wait()
        log.close()
    assert "leaked semaphore" not in (tmp_path / "stderr.txt").read_text()
    assert not list((tmp_path / "cache").glob("*/*/meta.json"))  # killed mid-job: nothing finished


def test_run_jobs_in_workers_keeps_order_and_raises_the_jobs_error():
    assert run_jobs(abs, [-3, 1, -2, 5, -7], workers=2, progress=False) == [3, 1, 2, 5, 7]
    with pytest.raises(TypeError, match="bad operand") as info:
        run_jobs(abs, [1, "x", 2], workers=2, progress=False)
    assert "raised in a worker process running job 'x'" in "".join(getattr(info.value, "__notes__", []))


def test_a_worker_dying_mid_job_is_an_error_naming_the_job(tmp_path):
    """multiprocessing.Pool would wait for it forever; run in a subprocess so that a hang fails."""
    proc = _run_script(tmp_path, """
        import os
        from fusionkit.data.parallel import run_jobs

        if __name__ == "__main__":
            run_jobs(os._exit, [7, 7], workers=2, progress=False)
    """)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("run_jobs hung on a dead worker")
    finally:
        _kill_group(proc)
    assert "RuntimeError: a worker process of _exit died (exit code 7, e.g. out of memory) while running job 7" in err


@pytest.mark.parametrize("call", [
    "extract_flow({root!r}, {out!r}, workers=2, progress=False)",
    "prepare_puzzle('motion', {out!r}, videos_per_class=4, frames=4, size=32, workers=2, progress=False)",
])
def test_workers_from_a_script_without_a_main_guard_fail_at_once_saying_to_add_it(motion_puzzle, tmp_path, call):
    code = f"""
        from fusionkit.data.flow import extract_flow
        from fusionkit.data.puzzles import prepare_puzzle

        {call.format(root=str(motion_puzzle), out=str(tmp_path / 'out'))}
        print("finished")
    """
    start = time.monotonic()
    proc = _run_script(tmp_path, code)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        _kill_group(proc)  # the spawned workers too
        proc.communicate()
        pytest.fail("the script hung instead of failing")
    finally:
        _kill_group(proc)
    assert proc.returncode != 0 and "finished" not in out
    name = {"extract_flow": "extract_flow", "prepare_puzzle": "make_puzzles"}[call.split("(")[0]]  # what ran workers
    assert f"RuntimeError: {name} with workers > 1 starts worker processes with the 'spawn' method" in err
    assert 'if __name__ == "__main__":' in err and str(tmp_path / "script.py") in err
    assert time.monotonic() - start < 60
    assert not list((tmp_path / "out").rglob("*.jpg")) if (tmp_path / "out").exists() else True
