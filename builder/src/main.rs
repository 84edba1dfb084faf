//! The `estiba` binary: parses arguments, runs the command, and turns any
//! error into a message and an exit code (1: the build failed, 2: usage).

mod cli;

fn main() {
    std::process::exit(cli::main());
}
