"""Command-line tools of the core; each module exposes ``main(argv=None) -> int``."""
