"""The bottom layer: image reading and writing, mask drawing, distributed helpers. Imports nothing else of self1e."""
