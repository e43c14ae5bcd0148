"""Platform backends: everything that talks to one operating system lives below here.

The core (classification, journal, engine) only uses the types in ``base`` and the
backend object returned by :func:`get_backend`.
"""
