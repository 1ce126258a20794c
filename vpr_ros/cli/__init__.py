"""Console scripts; each module exposes ``main(argv=None) -> int``.

May import every library package; never ``vpr_ros.ros``.
"""
