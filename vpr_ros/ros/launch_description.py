"""The launch description both launch files share: arguments, a params file and one node.

A launch file names its executable and its table of ``(launch argument, node parameter,
description)``; :func:`node_launch_description` declares those arguments plus ``namespace``,
``params_file`` (default: the package's ``config/<executable>.yaml``) and ``use_sim_time``, and
starts the node. An argument given on the command line overrides the file; an argument left empty
keeps the file's value.
"""

import os
from typing import Sequence

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'vpr_ros'
COMMON_ARGUMENTS = ('namespace', 'params_file', 'use_sim_time')
"""Arguments every launch file declares besides its parameter table."""

ArgumentTable = Sequence[tuple[str, str, str]]


def typed_value(parameter: str, text: str, boolean_parameters: Sequence[str]) -> object:
    """Return ``text`` as a bool for boolean parameters, else unchanged."""
    if parameter in boolean_parameters:
        return text.strip().lower() in ('true', '1', 'yes', 'on')
    return text


def parameter_overrides(context: LaunchContext, table: ArgumentTable,
                        boolean_parameters: Sequence[str]) -> dict:
    """Return the node parameters set by non-empty launch arguments (and ``use_sim_time``)."""
    overrides = {'use_sim_time': typed_value(
        'use_sim_time', LaunchConfiguration('use_sim_time').perform(context), ('use_sim_time',))}
    for argument, parameter, _ in table:
        value = LaunchConfiguration(argument).perform(context)
        if value != '':
            overrides[parameter] = typed_value(parameter, value, boolean_parameters)
    return overrides


def node_launch_description(executable: str, table: ArgumentTable,
                            boolean_parameters: Sequence[str]) -> LaunchDescription:
    """Declare the arguments of ``table`` and the common ones, and start ``executable``."""
    def node(context: LaunchContext, *args, **kwargs) -> list:
        return [Node(
            package=PACKAGE, executable=executable, name=executable,
            namespace=LaunchConfiguration('namespace').perform(context),
            parameters=[LaunchConfiguration('params_file').perform(context),
                        parameter_overrides(context, table, boolean_parameters)],
            output='screen')]

    default_params = os.path.join(get_package_share_directory(PACKAGE), 'config',
                                  f'{executable}.yaml')
    arguments = [DeclareLaunchArgument(name, default_value='', description=text)
                 for name, _, text in table]
    arguments += [
        DeclareLaunchArgument('namespace', default_value='', description='node namespace'),
        DeclareLaunchArgument('params_file', default_value=default_params,
                              description='YAML parameter file'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='use /clock (bag replay)'),
    ]
    return LaunchDescription(arguments + [OpaqueFunction(function=node)])
