"""The ainative daemon: discovery -> classification -> engine, and its control socket."""
