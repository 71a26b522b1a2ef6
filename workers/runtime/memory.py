"""Memory figures for the heartbeat: device memory through pynvml when an NVIDIA
GPU is present, else this process tree's RSS (vLLM's engine runs in children)."""

import logging
import os

import psutil
import pynvml

logger = logging.getLogger(__name__)
_nvml = None


def _nvml_handles():
    global _nvml
    if _nvml is None:
        try:
            pynvml.nvmlInit()
            _nvml = (pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())])
        except Exception:  # no driver or no GPU
            _nvml = (None, [])
    return _nvml


def process_tree_rss(pid=None):
    try:
        root = psutil.Process(pid or os.getpid())
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


def snapshot():
    """{'memory_kind', 'memory_used', 'memory_total', 'host_memory_used'} in bytes."""
    host = psutil.virtual_memory()
    pynvml, handles = _nvml_handles()
    if handles:
        used = total = 0
        for handle in handles:
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            used += info.used
            total += info.total
        return {"memory_kind": "gpu", "memory_used": used, "memory_total": total, "host_memory_used": host.used}
    return {
        "memory_kind": "host",
        "memory_used": process_tree_rss(),
        "memory_total": host.total,
        "host_memory_used": host.used,
    }
