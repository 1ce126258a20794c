"""ROS 2 tools beside the nodes: bag player, live demo, replay evaluation, soak test.

May import ``vpr_ros.ros`` and every library package.
"""
