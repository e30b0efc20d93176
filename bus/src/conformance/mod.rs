//! The conformance suite (not written yet).
