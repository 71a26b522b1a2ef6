"""The engine: vllm_engine.py (the only module that imports vLLM), host.py (the one engine a worker
process holds), types.py (what it takes and returns). Imports nothing else of the project."""
