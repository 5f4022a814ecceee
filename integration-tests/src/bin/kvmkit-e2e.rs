//! The kvmkit command line, for the end-to-end tests (same code as the `kvmkit` binary).

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(kvmkit::app::main(std::env::args_os()) as u8)
}
