//! The hello-world taskmaster.
fn main() {}
