"""Frames in: image codecs, image folders, rosbags, ground truth by position, benchmark formats.

Owns everything that turns files on disk into :class:`~vpr_ros.data.frame.Frame` objects and
ground-truth positives. May import: the ground floor (``vpr_ros.config``, ``vpr_ros.errors``,
``vpr_ros.geometry``). Never imports models, the map, localization, evaluation or ROS.
"""
