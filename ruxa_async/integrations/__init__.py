"""Integrations with task queues and worker frameworks (each module needs its extra)."""
