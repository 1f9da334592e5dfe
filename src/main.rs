//! The `endpoint-copier` binary: flags, logging, config, runtime, exit code.

fn main() {}
