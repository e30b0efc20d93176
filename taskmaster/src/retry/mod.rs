//! Retry (in progress).
