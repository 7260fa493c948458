//! The `perch` binary: flags → config → runtime. The only place that exits the process.

use perch::config::{help_text, Command, Config, Flags};
use std::process::ExitCode;

fn main() -> ExitCode {
    perch::runtime::allocator::tune();
    let flags = match Flags::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(f)) => f,
        Ok(Command::Import(f, file)) => {
            env_logger::Builder::new().filter_level(f.log_level).init();
            return match perch::runtime::import::run(&file, &f) {
                Ok(r) => {
                    println!(
                        "imported {} samples of {} series from {} into {}",
                        r.samples,
                        r.series,
                        file.display(),
                        f.storage_path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("perch import: error: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Ok(Command::Help) => {
            print!("{}", help_text());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("perch, version {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("perch: error: {e}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::new()
        .filter_level(flags.log_level)
        .format_timestamp_millis()
        .init();
    let config = match Config::load(flags) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            eprintln!("perch: error: {e}");
            return ExitCode::from(1);
        }
    };
    match perch::runtime::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
