"""Killing process trees: the Kill command's fallback, a worker killing itself, the dev stack."""

import psutil


def kill_all(processes, timeout=30.0):
    """SIGKILL to each process (gone ones are skipped); waits up to `timeout` s for them to exit."""
    for process in processes:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(processes, timeout=timeout)
