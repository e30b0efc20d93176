//! The taskbus command line.
fn main() {}
