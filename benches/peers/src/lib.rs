//! Holds nothing: the comparison is the `peers` bench.
