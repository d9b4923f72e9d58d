"""Divide and conquer: the sum of squares over a range, split recursively.

A task whose range is too large for one kernel creates two subtasks for the halves
and a third that adds their sums; that third one takes over the task's own output,
so the client waits for one result whatever the depth. Run ``python -m
samples.divide`` from the repository's root.
"""
