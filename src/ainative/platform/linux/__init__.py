"""Linux backend: procfs, the netlink process connector, scheduling knobs, cgroups."""
