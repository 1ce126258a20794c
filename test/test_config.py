"""Config dataclasses: validation, dict round trip, and CLI flags generated from them."""

import argparse
from dataclasses import fields, FrozenInstanceError

import pytest

from vpr_ros.cli.arguments import add_config_arguments, config_from_args
from vpr_ros.config import config_from_dict, config_to_dict, IndexConfig, LocalizerConfig
from vpr_ros.errors import ConfigError

CONFIGS = [IndexConfig, LocalizerConfig]


@pytest.mark.parametrize('cls', CONFIGS)
def test_every_field_has_help(cls: type) -> None:
    """Every option carries a real description (used for ROS parameters and --help)."""
    for f in fields(cls):
        assert len(f.metadata.get('help', '')) > 10, f'{cls.__name__}.{f.name} lacks help'


@pytest.mark.parametrize('cls', CONFIGS)
def test_dict_round_trip_and_frozen(cls: type) -> None:
    """config_to_dict / config_from_dict round trip; instances are immutable."""
    obj = cls()
    assert config_from_dict(cls, config_to_dict(obj)) == obj
    with pytest.raises(FrozenInstanceError):
        setattr(obj, fields(cls)[0].name, None)


@pytest.mark.parametrize('bad, match', [
    ({'top_k': 0}, 'outside'),
    ({'accept_probability': 1.5}, 'outside'),
    ({'device': 'tpu'}, 'not one of'),
    ({'top_k': 'ten'}, 'must be int'),
    ({'rerank': 1}, 'must be bool'),
    ({'topk': 5}, 'unknown LocalizerConfig option'),
])
def test_invalid_values_name_the_problem(bad: dict, match: str) -> None:
    """Out-of-range, wrongly typed and unknown options raise ConfigError naming the field."""
    with pytest.raises(ConfigError, match=match):
        config_from_dict(LocalizerConfig, bad)


def test_int_is_accepted_for_float_fields() -> None:
    """YAML writes 1 for 1.0; float fields take it."""
    assert config_from_dict(LocalizerConfig, {'accept_probability': 1}).accept_probability == 1.0


def test_cli_flags_match_fields_and_defaults() -> None:
    """Flags are generated per field, help strings show defaults, values parse back."""
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, LocalizerConfig)
    args = parser.parse_args(['--top-k', '7', '--no-rerank', '--device', 'cpu'])
    config = config_from_args(LocalizerConfig, args)
    assert (config.top_k, config.rerank, config.device) == (7, False, 'cpu')
    assert config.batch_size == LocalizerConfig().batch_size
    names = {f.name for f in fields(LocalizerConfig)}
    helps = [a.help for a in parser._actions if a.dest in names]
    assert len(helps) == len(fields(LocalizerConfig))
    assert all('%(default)s' in h for h in helps)
