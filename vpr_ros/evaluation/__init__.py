"""Evaluation: metrics, the evaluation runner, reports and plots.

May import: the ground floor, ``vpr_ros.data``, ``vpr_ros.models``, ``vpr_ros.map`` and
``vpr_ros.localization``.
"""
