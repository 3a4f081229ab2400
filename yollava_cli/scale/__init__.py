"""Scaling out on Ray (`--ray`): eval subjects, batches of photos to embed, and concepts to train,
each a unit of work on a stateless worker; the machine that runs the command (the driver) keeps
the registry and the photo store and writes each finished unit itself.

Imported only when `--ray` (or the config's "ray") asks for it: without it Ray is never imported.
"""
