"""Storage backends, one module each, all behind ``base.Backend``; ``registry.BACKENDS`` lists them."""
