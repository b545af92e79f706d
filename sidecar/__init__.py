"""artifact sidecar: publish and serve an AI agent's artifacts from inside its sandbox."""

__all__ = ("__version__",)

__version__ = "0.1.0"
