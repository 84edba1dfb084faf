//! The `estiba` binary: parses arguments, runs the command, and turns any
//! error into a message and an exit code (1: the build failed, 2: usage).

mod cli;

fn main() {
    if std::env::args_os().nth(1).as_deref()
        == Some(std::ffi::OsStr::new(estiba::executor::INIT_ARG))
    {
        estiba::executor::init_main()
    }
    std::process::exit(cli::main());
}
