"""GPU telemetry (NVML). Works without any GPU, and says so plainly."""
