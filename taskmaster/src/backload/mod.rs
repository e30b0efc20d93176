//! Backload (in progress).
