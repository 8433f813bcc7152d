"""lb: a pure-Python HTTP load balancer for zero-downtime rolling deploys.

`lb.__version__` is the installed distribution's version (its package metadata), read
when first asked for: the workers and the hot path never pay for the lookup."""


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("lb")
        except PackageNotFoundError:          # run from a source tree that was never installed
            return "unknown"
    raise AttributeError(f"module 'lb' has no attribute {name!r}")
