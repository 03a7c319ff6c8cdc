"""The CPU capture job's allocator settings: applied where glibc is the C library, a no-op elsewhere."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import pytest

from neuron_census import host_allocator


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_glibc_accepts_the_settings_in_a_process_of_its_own():
    code = "from neuron_census.host_allocator import keep_freed_blocks; print(keep_freed_blocks())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"


def test_a_c_library_without_mallopt_changes_nothing(monkeypatch):
    def no_library(name):
        raise OSError(f"{name}: not found")

    monkeypatch.setattr(ctypes, "CDLL", no_library)
    assert host_allocator.keep_freed_blocks() is False
