"""Small, real kernels with the client that drives them; each is also a test."""
