//! The `kvmkit` binary.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(kvmkit::app::main(std::env::args_os()) as u8)
}
