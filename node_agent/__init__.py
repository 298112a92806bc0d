"""The node agent: runs beside an inference engine, advertises it, and executes jobs from the bus."""

__version__ = "0.1.0"
