"""Launch the vpr_ros ``localize`` node.

``ros2 launch vpr_ros localize.launch.py map_path:=/maps/office image_topic:=/camera/image_raw``

Parameters come from ``params_file`` (default: the package's ``config/localize.yaml``); an argument
given on the command line overrides the file, an argument left empty keeps the file's value.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'vpr_ros'
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


def _typed(parameter: str, text: str):
    """Return ``text`` as a bool for boolean parameters, else unchanged."""
    if parameter in BOOLEAN_PARAMETERS:
        return text.strip().lower() in ('true', '1', 'yes', 'on')
    return text


def _node(context, *args, **kwargs) -> list:
    """Build the node once the launch arguments are known."""
    overrides = {'use_sim_time': _typed(
        'use_sim_time', LaunchConfiguration('use_sim_time').perform(context))}
    for argument, parameter, _ in PARAMETER_ARGUMENTS:
        value = LaunchConfiguration(argument).perform(context)
        if value != '':
            overrides[parameter] = _typed(parameter, value)
    return [Node(
        package=PACKAGE, executable=EXECUTABLE, name=EXECUTABLE,
        namespace=LaunchConfiguration('namespace').perform(context),
        parameters=[LaunchConfiguration('params_file').perform(context), overrides],
        output='screen')]


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments and the node."""
    default_params = os.path.join(get_package_share_directory(PACKAGE), 'config',
                                  f'{EXECUTABLE}.yaml')
    arguments = [DeclareLaunchArgument(name, default_value='', description=text)
                 for name, _, text in PARAMETER_ARGUMENTS]
    arguments += [
        DeclareLaunchArgument('namespace', default_value='', description='node namespace'),
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='YAML parameter file'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='use /clock (bag replay)'),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=_node)])
