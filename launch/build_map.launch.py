"""Launch the vpr_ros ``build_map`` node.

``ros2 launch vpr_ros build_map.launch.py map_path:=/maps/office image_topic:=/camera/image_raw
pose_topic:=/odom``

Parameters come from ``params_file`` (default: the package's ``config/build_map.yaml``); an
argument given on the command line overrides the file, an argument left empty keeps the file's
value. The map is saved on ``~/save`` and when the launch is stopped.
(:mod:`vpr_ros.ros.launch_description` builds the description both launch files share.)
"""

from launch import LaunchDescription

from vpr_ros.ros.launch_description import node_launch_description

EXECUTABLE = 'build_map'
PARAMETER_ARGUMENTS = (
    ('map_path', 'map_path', 'map database directory'),
    ('model', 'model', 'registry model name, e.g. efficientnet_lite0_gem'),
    ('checkpoint', 'checkpoint', 'safetensors checkpoint (overrides model)'),
    ('image_topic', 'image_topic', 'camera topic, e.g. /camera/image_raw'),
    ('use_compressed', 'use_compressed', 'true: read <image_topic>/compressed'),
    ('pose_topic', 'pose_topic', 'pose topic paired with the images, e.g. /odom'),
    ('pose_source', 'pose_source', 'odometry, pose_stamped or pose_with_covariance'),
    ('device', 'localizer.device', 'auto, cpu or cuda'),
)
"""(launch argument, node parameter, description); empty arguments keep the params_file value."""
BOOLEAN_PARAMETERS = ('use_compressed', 'use_sim_time')


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments and the node."""
    return node_launch_description(EXECUTABLE, PARAMETER_ARGUMENTS, BOOLEAN_PARAMETERS)
