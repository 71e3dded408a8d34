"""Testing utilities shipped with the package: the gradient checker and the layer spec table."""
