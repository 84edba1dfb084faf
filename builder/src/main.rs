//! placeholder until the cli lands
fn main() {}
