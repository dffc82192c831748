//! `eci exec -it`: attaches to the CRI streaming URL of an exec.

use super::CliError;

pub async fn attach(uri: &str, _stdin: bool, _tty: bool) -> Result<i32, CliError> {
    Err(CliError::Other(format!(
        "interactive exec is not supported by this CLI yet (stream at {uri})"
    )))
}
