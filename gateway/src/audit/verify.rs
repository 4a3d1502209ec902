//! `moat audit verify FILE...`: checks the hash chain of audit files.
//! (Skeleton: issue 14 fills it in.)

use std::path::PathBuf;
use std::process::ExitCode;

pub fn run(files: &[PathBuf]) -> ExitCode {
    let _ = files;
    eprintln!("moat audit verify: not implemented yet");
    ExitCode::from(2)
}
