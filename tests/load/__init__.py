"""A load test of the control plane: good clients with bad ones mixed in."""
