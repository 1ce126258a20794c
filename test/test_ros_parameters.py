"""Node parameters: declared from the config dataclasses, YAML files in sync, launch files sane."""

import ast
from dataclasses import fields
import math

from conftest import REPO_ROOT
import pytest
from rcl_interfaces.msg import ParameterType
from rclpy.exceptions import InvalidParameterValueException
from rclpy.node import Node
from rclpy.parameter import Parameter
from ros_harness import domain_id, RosGraph
from vpr_ros.config import config_from_dict, LocalizerConfig
from vpr_ros.errors import ConfigError
from vpr_ros.ros.node_config import BuildMapNodeConfig, LOCALIZE_GROUPS, NODE_GROUPS
from vpr_ros.ros.parameters import group_parameter_names, NodeParameters, parameters_yaml
import yaml


pytestmark = pytest.mark.ros


def _flatten(tree: dict, prefix: str = '') -> dict:
    out = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(_flatten(value, name + '.'))
        else:
            out[name] = value
    return out


@pytest.mark.parametrize('node_name', sorted(NODE_GROUPS))
def test_yaml_keys_equal_the_dataclass_fields(node_name: str) -> None:
    """config/<node>.yaml holds exactly the declared parameters (no unknown, none missing)."""
    data = yaml.safe_load((REPO_ROOT / 'config' / f'{node_name}.yaml').read_text())
    values = _flatten(data['/**']['ros__parameters'])
    groups = NODE_GROUPS[node_name]
    expected = set(group_parameter_names(groups))
    assert set(values) - expected == set(), 'keys in YAML that the node does not declare'
    assert expected - set(values) == set(), 'declared parameters missing from the YAML'
    for group in groups:
        own = {n: values[group.parameter_name(n)] for n in group.field_names()}
        config_from_dict(group.cls, own)     # every value in the file validates


@pytest.mark.parametrize('node_name', sorted(NODE_GROUPS))
def test_yaml_is_the_generated_file(node_name: str) -> None:
    """config/<node>.yaml is exactly what the dataclasses generate: defaults and help too."""
    text = (REPO_ROOT / 'config' / f'{node_name}.yaml').read_text()
    title = text.splitlines()[0][2:]
    assert text == parameters_yaml(NODE_GROUPS[node_name], title), (
        f'config/{node_name}.yaml is stale: regenerate it with vpr_ros.ros.parameters.'
        'parameters_yaml')


@pytest.mark.parametrize('node_name', sorted(NODE_GROUPS))
def test_every_parameter_has_help_and_numbers_have_ranges(node_name: str) -> None:
    """Help text for all fields, a range for every int/float field."""
    for group in NODE_GROUPS[node_name]:
        specs = {f.name: f for f in fields(group.cls)}
        for name in group.field_names():
            spec = specs[name]
            assert len(spec.metadata.get('help', '')) > 10, f'{group.cls.__name__}.{name}'
            if spec.type in (int, float):
                assert 'range' in spec.metadata, f'{group.cls.__name__}.{name} has no range'


@pytest.fixture(scope='module')
def graph():
    """Return an isolated rclpy context with a background executor."""
    ros = RosGraph(domain_id(1))
    yield ros
    ros.close()


def _node_with_parameters(graph, overrides=()) -> tuple:
    changes = []
    node = Node('param_probe', context=graph.context, parameter_overrides=list(overrides))
    try:
        params = NodeParameters(node, LOCALIZE_GROUPS, changes.append)
    except Exception:
        node.destroy_node()
        raise
    return node, params, changes


def test_descriptors_carry_description_range_and_read_only(graph) -> None:
    """Declared parameters expose help, ranges and the read-only flag to ROS tools."""
    node, _, _ = _node_with_parameters(graph)
    try:
        top_k, prob, device, topic = node.describe_parameters(
            ['localizer.top_k', 'localizer.accept_probability', 'localizer.device',
             'image_topic'])
        assert top_k.type == ParameterType.PARAMETER_INTEGER and not top_k.read_only
        assert (top_k.integer_range[0].from_value, top_k.integer_range[0].to_value) == (1, 10000)
        assert prob.floating_point_range[0].to_value == 1.0 and 'calibrated' in prob.description
        assert device.read_only and 'cuda' in device.additional_constraints
        assert topic.read_only and topic.type == ParameterType.PARAMETER_STRING
    finally:
        node.destroy_node()


def test_overrides_become_the_typed_config(graph) -> None:
    """Launch / YAML overrides end up in the config objects the node uses."""
    overrides = [Parameter('localizer.top_k', value=7), Parameter('map_frame', value='world'),
                 Parameter('keyframe.min_interval_s', value=0.25)]
    node, params, _ = _node_with_parameters(graph, overrides)
    try:
        assert params.config('localizer') == LocalizerConfig(top_k=7)
        assert params.config().map_frame == 'world'
        assert params.config('keyframe').min_interval_s == 0.25
    finally:
        node.destroy_node()


@pytest.mark.parametrize('name,value', [('localizer.top_k', 0), ('localizer.device', 'tpu')])
def test_invalid_overrides_fail_at_start(graph, name: str, value) -> None:
    """An out-of-range or unknown-choice override stops the node with a clear error."""
    with pytest.raises((InvalidParameterValueException, ConfigError)) as info:
        _node_with_parameters(graph, [Parameter(name, value=value)])
    assert name.split('.')[-1] in str(info.value)


@pytest.mark.parametrize('name,value,words', [
    ('localizer.top_k', 0, 'top_k'),
    ('localizer.accept_probability', 1.5, 'accept_probability'),
    ('localizer.accept_probability', math.nan, 'accept_probability'),
    ('keyframe.min_rotation_deg', -1.0, 'min_rotation_deg'),
    ('image_topic', 'other', 'read-only'),
    ('localizer.device', 'cpu', 'read-only'),
    ('localizer.top_k', 'ten', 'type'),
])
def test_invalid_runtime_changes_are_rejected_with_a_reason(graph, name, value, words) -> None:
    """set_parameters fails, names the problem, and leaves the config unchanged."""
    node, params, changes = _node_with_parameters(graph)
    try:
        before = params.config('localizer')
        result = node.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful
        assert words in result.reason.lower() or words in result.reason
        assert params.config('localizer') == before and changes == []
    finally:
        node.destroy_node()


def test_valid_runtime_change_updates_config_and_notifies(graph) -> None:
    """A valid atomic change of two parameters updates the config and calls back once."""
    node, params, changes = _node_with_parameters(graph)
    try:
        result = node.set_parameters_atomically([Parameter('localizer.top_k', value=3),
                                                 Parameter('localizer.accept_probability',
                                                           value=0.8)])
        assert result.successful
        assert params.config('localizer').top_k == 3
        assert params.config('localizer').accept_probability == 0.8
        assert changes == [{'localizer'}]
    finally:
        node.destroy_node()


def _launch_tree(name: str) -> ast.Module:
    return ast.parse((REPO_ROOT / 'launch' / name).read_text())


def _helper_tree() -> ast.Module:
    """Return the shared launch helper's syntax tree (launch is not importable without ROS)."""
    return ast.parse((REPO_ROOT / 'vpr_ros' / 'ros' / 'launch_description.py').read_text())


def _constant(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', None) == name:
            return ast.literal_eval(node.value)
    raise AssertionError(f'{name} not found')


def _calls(tree: ast.Module, function: str) -> list:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, 'id', getattr(n.func, 'attr', None)) == function]


def _imported_roots(tree: ast.Module) -> set:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split('.')[0])
    return roots


def _console_scripts() -> set:
    setup = ast.parse((REPO_ROOT / 'setup.py').read_text())
    scripts = set()
    for node in ast.walk(setup):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and ' = ' in node.value:
            scripts.add(node.value.split(' = ')[0].strip())
    return scripts


@pytest.mark.parametrize('node_name,extra', [('localize', set()),
                                             ('build_map', {'pose_topic', 'pose_source'})])
def test_launch_files_declare_arguments_for_real_parameters(node_name: str, extra: set) -> None:
    """Check launch arguments, their parameters, the executable and the imports.

    Each launch file declares the issue's arguments, maps them onto declared parameters, starts
    an installed console script through the shared launch helper and imports only launch and it.
    """
    tree = _launch_tree(f'{node_name}.launch.py')
    table = _constant(tree, 'PARAMETER_ARGUMENTS')
    arguments = {row[0] for row in table} | set(_constant(_helper_tree(), 'COMMON_ARGUMENTS'))
    required = {'map_path', 'model', 'checkpoint', 'image_topic', 'use_compressed', 'device',
                'namespace', 'params_file', 'use_sim_time'} | extra
    assert arguments == required
    declared = set(group_parameter_names(NODE_GROUPS[node_name]))
    assert {row[1] for row in table} <= declared
    assert set(_constant(tree, 'BOOLEAN_PARAMETERS')) - {'use_sim_time'} <= declared
    for name, _, _ in table:
        field = BuildMapNodeConfig.__dataclass_fields__.get(name)
        assert field is None or field.type is not bool or name in _constant(
            tree, 'BOOLEAN_PARAMETERS')
    assert _constant(tree, 'EXECUTABLE') == node_name
    assert node_name in _console_scripts()
    assert _imported_roots(tree) <= {'launch', 'vpr_ros'}
    assert 'generate_launch_description' in {f.name for f in tree.body
                                             if isinstance(f, ast.FunctionDef)}
    assert len(_calls(tree, 'node_launch_description')) == 1


def test_launch_helper_declares_the_common_arguments_and_one_node() -> None:
    """The shared launch helper declares namespace, params_file, use_sim_time and one Node."""
    tree = _helper_tree()
    declared = {call.args[0].value for call in _calls(tree, 'DeclareLaunchArgument')
                if call.args and isinstance(call.args[0], ast.Constant)}
    assert declared == set(_constant(tree, 'COMMON_ARGUMENTS'))
    assert len(_calls(tree, 'Node')) == 1
    assert _imported_roots(tree) <= {'os', 'typing', 'ament_index_python', 'launch', 'launch_ros'}


@pytest.mark.parametrize('node_name', sorted(NODE_GROUPS))
def test_doc_parameter_table_is_generated(node_name: str) -> None:
    """The parameter table of each node in docs/ros.md is the one the dataclasses generate."""
    from vpr_ros.ros.parameters import parameters_table
    doc = (REPO_ROOT / 'docs' / 'ros.md').read_text()
    assert f'### {node_name}\n\n{parameters_table(NODE_GROUPS[node_name])}' in doc, (
        f'docs/ros.md parameter table of {node_name} is stale: regenerate it with '
        f'vpr_ros.ros.parameters.parameters_table(NODE_GROUPS[{node_name!r}]) '
        '(NODE_GROUPS from vpr_ros.ros.node_config)')
