"""A stand-in for k-diffusion as the webui uses it (tests only; see ../README.md)."""
