"""Algorithms of vpr_ros: models, map database, localization pipeline; no ROS imports here."""
