//! syncforge-backend-fs (being written).
