//! HTTP downloads, with a progress bar on a terminal.

use crate::error::{LoraError, Result};

/// The body of `url` (HTTP GET), with a progress bar labelled `label` on a terminal. The error
/// names the URL and why it failed.
pub fn get(url: &str, label: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let fail = |why: String| LoraError::file(url, format!("cannot be downloaded: {why}"));
    // A stalled server ends the download with an error instead of hanging the run.
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    let resp = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(code, _) => fail(format!("HTTP status {code}")),
        ureq::Error::Transport(t) => fail(match t.message() {
            Some(m) => format!("{}: {m}", t.kind()),
            None => t.kind().to_string(),
        }),
    })?;
    let len = resp.header("content-length").and_then(|v| v.parse::<u64>().ok());
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_message(label.to_string());
    // The header is the server's word, not a promise: reserve at most 256 MiB up front.
    let mut bytes = Vec::with_capacity(len.unwrap_or(0).min(256 << 20) as usize);
    let mut reader = bar.wrap_read(resp.into_reader());
    reader.read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
    bar.finish_and_clear();
    Ok(bytes)
}
