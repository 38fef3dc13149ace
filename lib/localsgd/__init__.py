"""localsgd: Local (S)GD on over-parameterised ReLU networks, after Deng, Kamani and Mahdavi
(2022)."""

__version__ = "0.1.0"
