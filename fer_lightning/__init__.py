"""fer_lightning: Lightning experiments for facial-expression recognition."""

__version__ = "0.1.0"
