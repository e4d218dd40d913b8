"""icm: independent mechanisms in deep convolutional generators."""
