"""Launch the vpr_ros ``localize`` node.

``ros2 launch vpr_ros localize.launch.py map_path:=/maps/office image_topic:=/camera/image_raw``

Parameters come from ``params_file`` (default: the package's ``config/localize.yaml``); an argument
given on the command line overrides the file, an argument left empty keeps the file's value
(:mod:`vpr_ros.ros.launch_description` builds the description both launch files share).
"""

from launch import LaunchDescription

from vpr_ros.ros.launch_description import node_launch_description

EXECUTABLE = 'localize'
PARAMETER_ARGUMENTS = (
    ('map_path', 'map_path', 'map database directory'),
    ('model', 'model', 'registry model name, e.g. efficientnet_lite0_gem'),
    ('checkpoint', 'checkpoint', 'safetensors checkpoint (overrides model)'),
    ('image_topic', 'image_topic', 'camera topic, e.g. /camera/image_raw'),
    ('use_compressed', 'use_compressed', 'true: read <image_topic>/compressed'),
    ('device', 'localizer.device', 'auto, cpu or cuda'),
)
"""(launch argument, node parameter, description); empty arguments keep the params_file value."""
BOOLEAN_PARAMETERS = ('use_compressed', 'use_sim_time')


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments and the node."""
    return node_launch_description(EXECUTABLE, PARAMETER_ARGUMENTS, BOOLEAN_PARAMETERS)
