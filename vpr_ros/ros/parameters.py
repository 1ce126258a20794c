"""ROS parameters declared from config dataclasses, with descriptors and checked run-time changes.

Each :class:`~vpr_ros.ros.node_config.ParameterGroup` becomes one parameter per dataclass field:
the field default is the parameter default, ``metadata['help']`` its description, ``range`` an
integer or floating-point range, ``choices`` an ``additional_constraints`` text. Fields not marked
run-time changeable are read-only. A change is accepted only when the whole dataclass still
validates; otherwise the set-parameters call fails with the validation message as its reason.
"""

from dataclasses import Field, fields
import textwrap
from typing import Any, Callable, Optional, Sequence

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                SetParametersResult)
from rclpy.node import Node
from rclpy.parameter import Parameter

from vpr_ros.config import config_from_dict, config_to_dict
from vpr_ros.errors import ConfigError
from vpr_ros.ros.node_config import ParameterGroup

ChangeCallback = Callable[[set], None]


def parameter_descriptor(spec: Field, read_only: bool) -> ParameterDescriptor:
    """Return the descriptor of the parameter made from dataclass field ``spec``."""
    descriptor = ParameterDescriptor(description=spec.metadata.get('help', ''),
                                     read_only=read_only)
    lo_hi = spec.metadata.get('range')
    if lo_hi is not None and spec.type in (int, 'int'):
        descriptor.integer_range = [IntegerRange(from_value=int(lo_hi[0]), to_value=int(lo_hi[1]),
                                                 step=1)]
    elif lo_hi is not None:
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(lo_hi[0]), to_value=float(lo_hi[1]), step=0.0)]
    constraints = []
    if spec.metadata.get('choices'):
        constraints.append('one of: ' + ', '.join(spec.metadata['choices']))
    constraints.append('read-only' if read_only else 'changeable at run time')
    descriptor.additional_constraints = '; '.join(constraints)
    return descriptor


def group_parameter_names(groups: Sequence[ParameterGroup]) -> list[str]:
    """Return every ROS parameter name the groups declare, in declaration order."""
    return [g.parameter_name(n) for g in groups for n in g.field_names()]


def declare_group(node: Node, group: ParameterGroup) -> Any:
    """Declare the parameters of ``group`` on ``node`` and return the resulting config object.

    Raises:
        ConfigError: an override (launch file, YAML, ``-p``) fails the dataclass validation;
            the message names the ROS parameter (``localizer.device='gpu' is not one of ...``).
    """
    specs = {f.name: f for f in fields(group.cls)}
    values = {}
    for name in group.field_names():
        spec = specs[name]
        descriptor = parameter_descriptor(spec, read_only=not group.is_runtime(name))
        param = node.declare_parameter(group.parameter_name(name), group.default(name),
                                       descriptor)
        values[name] = param.value
    try:
        return config_from_dict(group.cls, values)
    except ConfigError as exc:
        prefix = f'{group.prefix}.' if group.prefix else ''
        raise ConfigError('parameter ' + str(exc).replace(f'{group.cls.__name__}.', prefix, 1)
                          ) from exc


class NodeParameters:
    """The typed configs of one node, kept in sync with its ROS parameters.

    ``on_change`` is called (from the executor thread) with the set of group prefixes whose config
    changed after a successful run-time parameter update.
    """

    def __init__(self, node: Node, groups: Sequence[ParameterGroup],
                 on_change: Optional[ChangeCallback] = None) -> None:
        """Declare every group on ``node`` and register the validation callbacks."""
        self._groups = {g.prefix: g for g in groups}
        self._configs = {g.prefix: declare_group(node, g) for g in groups}
        self._owner = {g.parameter_name(n): (g, n) for g in groups for n in g.field_names()}
        self._on_change = on_change
        node.add_on_set_parameters_callback(self.validate)
        node.add_post_set_parameters_callback(self.apply)

    def config(self, prefix: str = '') -> Any:
        """Return the current config object of the group with ``prefix``."""
        return self._configs[prefix]

    def validate(self, params: list[Parameter]) -> SetParametersResult:
        """Accept ``params`` only if every touched config still validates."""
        try:
            self._updated_configs(params)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def apply(self, params: list[Parameter]) -> None:
        """Store the configs changed by ``params`` (already validated) and notify the node."""
        updated = self._updated_configs(params)
        self._configs.update(updated)
        if updated and self._on_change is not None:
            self._on_change(set(updated))

    def _updated_configs(self, params: list[Parameter]) -> dict:
        changes: dict[str, dict] = {}
        for param in params:
            if param.name not in self._owner:
                continue
            group, name = self._owner[param.name]
            if not group.is_runtime(name):
                raise ConfigError(f'parameter {param.name!r} is read-only; restart the node '
                                  'to change it')
            changes.setdefault(group.prefix, {})[name] = param.value
        updated = {}
        for prefix, values in changes.items():
            group = self._groups[prefix]
            current = config_to_dict(self._configs[prefix])
            if group.names is not None:
                current = {k: current[k] for k in group.names}
            updated[prefix] = config_from_dict(group.cls, {**current, **values})
        return updated


def _yaml_value(value: Any) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return f"'{value}'"
    return repr(value)


def parameters_yaml(groups: Sequence[ParameterGroup], title: str) -> str:
    """Return a ``/**: ros__parameters:`` YAML file with every default and its help comment."""
    lines = [f'# {title}', '# Generated from vpr_ros/ros/node_config.py; keys are test-checked.',
             '/**:', '  ros__parameters:']
    for group in groups:
        specs = {f.name: f for f in fields(group.cls)}
        indent = '    '
        if group.prefix:
            lines.append(f'    {group.prefix}:')
            indent = '      '
        for name in group.field_names():
            spec = specs[name]
            lines.append(f'{indent}# {spec.metadata.get("help", "")}')
            lines.append(f'{indent}{name}: {_yaml_value(spec.default)}')
    return '\n'.join(lines) + '\n'


def parameters_table(groups: Sequence[ParameterGroup]) -> str:
    """Return a Markdown table (name, default, range, run-time, description) of the parameters."""
    rows = ['| parameter | default | range / choices | run time | description |',
            '|---|---|---|---|---|']
    for group in groups:
        specs = {f.name: f for f in fields(group.cls)}
        for name in group.field_names():
            spec = specs[name]
            limits = spec.metadata.get('range') or spec.metadata.get('choices') or ''
            limits = ', '.join(str(v) for v in limits) if limits else ''
            rows.append(f'| `{group.parameter_name(name)}` | `{_yaml_value(spec.default)}` | '
                        f'{limits} | {"yes" if group.is_runtime(name) else "no"} | '
                        f'{spec.metadata.get("help", "")} |')
    return '\n'.join(rows) + '\n'


_TYPE_NAMES = {bool: 'bool', int: 'integer', float: 'double', str: 'string'}


def parameters_help(groups: Sequence[ParameterGroup], width: int = 99) -> str:
    """Return the parameters of ``groups`` as ``--help`` text: name, type, default, limits, help.

    One entry per parameter, in declaration order, e.g.::

      localizer.top_k (integer, default 20, range 1..10000, run time)
          candidates shortlisted by global search and re-ranked ...
    """
    lines = []
    for group in groups:
        specs = {f.name: f for f in fields(group.cls)}
        for name in group.field_names():
            spec = specs[name]
            default = group.default(name)
            facts = [_TYPE_NAMES.get(type(default), type(default).__name__),
                     f'default {_yaml_value(default)}']
            if spec.metadata.get('range'):
                low, high = spec.metadata['range']
                facts.append(f'range {low}..{high}')
            if spec.metadata.get('choices'):
                facts.append('one of ' + ', '.join(spec.metadata['choices']))
            if group.is_runtime(name):
                facts.append('run time')
            lines.append(f'  {group.parameter_name(name)} ({", ".join(facts)})')
            lines += textwrap.wrap(spec.metadata.get('help', ''), width,
                                   initial_indent=' ' * 6, subsequent_indent=' ' * 6)
    return '\n'.join(lines)
