"""The procedural demo and test route: a closed street loop rendered in two traversals.

May import: the ground floor and ``vpr_ros.data`` (frames and bags).
"""
