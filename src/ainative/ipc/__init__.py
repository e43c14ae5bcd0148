"""The control socket's wire protocol and its client, shared by the daemon, the CLI,
the pinned pool's reports and every tool that launches a scoped daemon.

Kept apart from ``ainative.daemon`` so that a process using only the client (a model
server reporting its pool, the CLI) imports none of the daemon's code.
"""
