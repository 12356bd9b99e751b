"""qsim: question similarity for support desks."""

__version__ = "0.1.0"
