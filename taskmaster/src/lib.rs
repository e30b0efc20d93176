//! taskbus taskmaster engines.
