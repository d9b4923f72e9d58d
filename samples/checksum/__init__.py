"""A large payload: the client streams 512 MiB to one task, which returns its
SHA-256; neither side holds the payload in memory. Run ``python -m
samples.checksum`` from the repository's root.
"""
