"""ROS 2 node glue around :mod:`vpr_ros.core`."""
