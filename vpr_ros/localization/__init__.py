"""The localization pipeline: describe, shortlist, re-rank, verify, decide; map building.

May import: the ground floor, ``vpr_ros.data``, ``vpr_ros.models`` and ``vpr_ros.map``.
"""
