"""Strict state-dict key check: missing, unexpected and mis-shaped tensors, named in errors."""

from vpr_ros.errors import CheckpointError

MAX_NAMED_KEYS = 8


def name_keys(keys: list) -> str:
    """Return the first few ``keys`` and how many more there are."""
    shown = ', '.join(keys[:MAX_NAMED_KEYS])
    more = len(keys) - MAX_NAMED_KEYS
    return f'{shown} (+{more} more)' if more > 0 else shown


def compare_state_dicts(expected: dict, state: dict) -> tuple[list, list, list]:
    """Return ``(missing, unexpected, mis-shaped)`` key lists of ``state`` against ``expected``."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f'{key} (file {tuple(state[key].shape)}, model {tuple(expected[key].shape)})'
                  for key in sorted(set(state) & set(expected))
                  if tuple(state[key].shape) != tuple(expected[key].shape)]
    return missing, unexpected, mismatched


def describe_key_problems(missing: list, unexpected: list, mismatched: list) -> str:
    """Return one sentence naming the missing, unexpected and mis-shaped keys."""
    parts = [f'{len(keys)} {label}: {name_keys(keys)}'
             for label, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                                 ('shape mismatches', mismatched)) if keys]
    return '; '.join(parts)


def check_state_dict(expected: dict, state: dict, source: str) -> None:
    """Raise a :class:`CheckpointError` naming every key that does not match ``expected``."""
    problems = compare_state_dicts(expected, state)
    if any(problems):
        raise CheckpointError(f'{source} does not match the model: '
                              f'{describe_key_problems(*problems)}')
