"""Deployment files and the tools that check and simulate them."""
