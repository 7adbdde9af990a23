"""pyconv.save / pyconv.load: what a crashed save leaves behind, and what a bad file says."""
import os
import subprocess
import sys

import numpy as np
import pytest

import pyconv


def _temporaries(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(".tmp-"))


def test_a_save_killed_mid_write_leaves_a_temporary_that_the_next_save_removes(tmp_path):
    target = tmp_path / "ck.npz"
    # A process that dies (SIGKILL) while its temporary exists, as a crash mid-write would.
    code = ("import os, signal, numpy as np, pyconv.serialization as s\n"
            "real = np.savez\n"
            "def dying(f, **a):\n"
            "    real(f, **a); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
            "np.savez = dying\n"
            f"s.save({{'w': np.ones(1000)}}, {str(target)!r})\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -9
    assert not target.exists() and len(_temporaries(tmp_path)) == 1

    other = tmp_path / "other.npz"
    pyconv.save({"w": np.zeros(2)}, other)  # another target's save leaves it alone
    assert len(_temporaries(tmp_path)) == 1

    pyconv.save({"w": np.arange(3.0)}, target)
    assert _temporaries(tmp_path) == []
    np.testing.assert_array_equal(pyconv.load(target)["w"], np.arange(3.0))


def test_a_temporary_of_a_live_process_is_kept(tmp_path):
    live = tmp_path / f".tmp-ck.npz-{os.getppid()}-abc.npz"  # our parent is alive
    live.write_bytes(b"in progress")
    pyconv.save({"w": np.ones(2)}, tmp_path / "ck.npz")
    assert live.exists()


@pytest.mark.parametrize("content", [b"", b"x", b"PK\x03\x04", b"\x93NUMPY garbage"])
def test_loading_a_truncated_file_says_so_and_never_suggests_pickles(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(pyconv.CheckpointError, match="truncated or corrupt") as info:
        pyconv.load(path)
    assert "pickle" not in str(info.value).lower()
