//! syncforge-testkit (being written).
