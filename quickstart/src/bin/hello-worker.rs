//! The hello-world worker.
fn main() {}
