//! The evidence report (`moat report`, admin `/report`): per device, the
//! inventory and support status, the controls in force, the configuration
//! changes and denials over a period (from the audit trail), who had
//! access, and which of the guidance's compensating controls are in place
//! or missing. (Skeleton: issue 14 fills it in.)

use std::path::PathBuf;
use std::process::ExitCode;

use hyper::StatusCode;

use crate::runtime::Runtime;

/// `moat report -c moat.toml [--audit FILE] [--since 30d] --format html|md|json`
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// The audit trail to read (default: the policy's `gateway.audit_log`).
    #[arg(long, value_name = "FILE")]
    pub audit: Option<PathBuf>,
    /// The period covered, back from now (e.g. 30d, 12h).
    #[arg(long, default_value = "30d")]
    pub since: humantime::Duration,
    #[arg(long, default_value = "html")]
    pub format: String,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(args: ReportArgs) -> ExitCode {
    let _ = args;
    eprintln!("moat report: not implemented yet");
    ExitCode::from(2)
}

/// `GET /report?format=html|md|json&since=30d` on the admin listener:
/// (status, content type, body).
pub fn serve(rt: &Runtime, query: Option<&str>) -> (StatusCode, &'static str, Vec<u8>) {
    let _ = (rt, query);
    (
        StatusCode::NOT_IMPLEMENTED,
        "text/plain; charset=utf-8",
        b"not implemented yet\n".to_vec(),
    )
}
