"""Visual place recognition for ROS 2: retrieval core, ROS nodes and training recipes."""

__version__ = '0.1.0'
