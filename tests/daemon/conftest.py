from daemon_helpers import children, start_daemon  # noqa: F401  (pytest fixtures)
