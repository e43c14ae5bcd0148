"""Telemetry: one event schema (events.py) and its sources and sinks."""
