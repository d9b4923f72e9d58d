"""Monte Carlo estimate of pi: many sampling tasks, then one task gathering them.

Run ``python -m samples.pi`` from the repository's root: it starts a local grid and
prints the estimate.
"""
