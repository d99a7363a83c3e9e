"""A stand-in for the AUTOMATIC1111 webui's `modules` package (tests only; see ../README.md)."""
