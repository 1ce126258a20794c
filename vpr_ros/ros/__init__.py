"""ROS 2 nodes: thin glue between topics, parameters and the library.

The only package (with ``vpr_ros.ros.tools``) that imports rclpy and message packages. May import
every library package and ``vpr_ros.cli`` (shared command-line options).
"""
