//! syncforge-backend-memory (being written).
