"""The model specification that travels with every checkpoint and map."""

from dataclasses import asdict, dataclass, field
import hashlib
import json

from vpr_ros.errors import CheckpointError

SPEC_FORMAT_VERSION = 1
PREPROCESSING_FLOAT = 'float'
"""Resize the float image with PyTorch (antialiased bilinear, no rounding), then normalise."""
PREPROCESSING_OFFICIAL = 'official'
"""The official Pair-VPR evaluation transform: PIL bilinear resize to uint8, then normalise."""
PREPROCESSING_MODES = (PREPROCESSING_FLOAT, PREPROCESSING_OFFICIAL)


@dataclass(frozen=True)
class ModelSpec:
    """What a model is and how its inputs are prepared.

    ``architecture`` is a registry name; ``options`` are the keyword arguments that rebuild the
    same network from the registry (JSON-serialisable, stored as sorted ``(key, value)`` pairs).
    ``preprocessing`` is one of :data:`PREPROCESSING_MODES` (see
    :func:`vpr_ros.models.preprocessing.preprocess`). The JSON holds it only when it is not
    :data:`PREPROCESSING_FLOAT`, so a spec in that mode has the JSON and digest it had before
    the field existed, and a spec written without the field reads back in that mode.
    """

    architecture: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    descriptor_dim: int
    token_dim: int = 0
    num_tokens: int = 0
    has_pair_classifier: bool = False
    options: tuple = field(default=())
    format_version: int = SPEC_FORMAT_VERSION
    preprocessing: str = PREPROCESSING_FLOAT

    def __post_init__(self) -> None:
        """Refuse an unknown ``preprocessing`` mode."""
        if self.preprocessing not in PREPROCESSING_MODES:
            raise ValueError(f'unknown preprocessing mode {self.preprocessing!r} '
                             f'(expected one of {list(PREPROCESSING_MODES)})')

    def to_json(self) -> str:
        """Serialise to a canonical JSON string (``preprocessing`` only when not the default)."""
        data = asdict(self)
        data['options'] = dict(self.options)
        if self.preprocessing == PREPROCESSING_FLOAT:
            del data['preprocessing']
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> 'ModelSpec':
        """Parse :meth:`to_json` output, naming the first missing or malformed field."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f'model spec is not valid JSON: {exc}') from exc
        if not isinstance(data, dict):
            raise CheckpointError('model spec must be a JSON object')
        version = data.get('format_version')
        if version != SPEC_FORMAT_VERSION:
            raise CheckpointError(f'model spec format_version {version!r} is not supported '
                                  f'(expected {SPEC_FORMAT_VERSION})')
        try:
            return cls(
                architecture=str(data['architecture']),
                input_size=tuple(int(v) for v in data['input_size']),
                mean=tuple(float(v) for v in data['mean']),
                std=tuple(float(v) for v in data['std']),
                descriptor_dim=int(data['descriptor_dim']),
                token_dim=int(data['token_dim']),
                num_tokens=int(data['num_tokens']),
                has_pair_classifier=bool(data['has_pair_classifier']),
                options=tuple(sorted(dict(data.get('options', {})).items())),
                format_version=int(version),
                preprocessing=str(data.get('preprocessing', PREPROCESSING_FLOAT)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f'model spec field missing or malformed: {exc!r}') from exc

    def digest(self) -> str:
        """Return a short SHA-256 of the canonical JSON (identifies the model family/options)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @property
    def kwargs(self) -> dict:
        """Return ``options`` as a dictionary of registry keyword arguments."""
        return dict(self.options)
