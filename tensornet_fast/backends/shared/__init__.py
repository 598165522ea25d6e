"""What every backend shares: radial functions, the compressed [N, 9, F] layout and the filter
tables. Backends import this package, never each other."""
