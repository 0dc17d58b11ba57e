//! syncforge (being written).
