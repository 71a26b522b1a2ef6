"""Realtime inference: the worker's server (server.py), the web's client and views (client.py,
views.py, schema.py), and the protocol between them (wire.py)."""
