"""Name-to-factory registries for encoders and complete VPR models."""

from typing import Callable, Generic, TypeVar

F = TypeVar('F', bound=Callable)


class Registry(Generic[F]):
    """A dictionary of named factories whose lookup errors list the valid names."""

    def __init__(self, kind: str) -> None:
        """Create an empty registry; ``kind`` names its entries in error messages."""
        self.kind = kind
        self._factories: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Return a decorator that registers a factory under ``name``."""
        def decorate(factory: F) -> F:
            if name in self._factories:
                raise ValueError(f'{self.kind} {name!r} is already registered')
            self._factories[name] = factory
            return factory
        return decorate

    def get(self, name: str) -> F:
        """Return the factory registered as ``name``."""
        if name not in self._factories:
            raise ValueError(f'unknown {self.kind} {name!r}; valid names: {self.names()}')
        return self._factories[name]

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._factories)


MODELS: Registry = Registry('model')
ENCODERS: Registry = Registry('encoder')


def register_model(name: str) -> Callable[[F], F]:
    """Register a factory ``(**kwargs) -> VprModel`` under ``name``."""
    return MODELS.register(name)


def create_model(name: str, **kwargs):
    """Build the registered model ``name``; unknown names raise ``ValueError`` listing them."""
    _import_builtin_models()
    return MODELS.get(name)(**kwargs)


def list_models() -> list[str]:
    """Return the names of every registered model."""
    _import_builtin_models()
    return MODELS.names()


def create_encoder(name: str, **kwargs):
    """Build the registered encoder ``name`` (a timm-backed feature extractor)."""
    _import_builtin_models()
    return ENCODERS.get(name)(**kwargs)


def _import_builtin_models() -> None:
    """Import the modules whose decorators fill the registries (kept lazy: torch is heavy)."""
    from vpr_ros.models import efficientnet, pairvpr  # noqa: F401
