//! Progress bars for long work in the CLI and tools (`indicatif`): one style for bytes, one for
//! counts. They draw on stderr and are hidden when stderr is not a terminal (scripts, tests, CI
//! logs see nothing), so callers never check for a terminal themselves.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

fn bar(total: u64, template: &str, msg: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg.to_string());
    pb
}

/// A bar over `total` bytes.
pub fn bytes(total: u64, msg: &str) -> ProgressBar {
    bar(
        total,
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        msg,
    )
}

/// A bar over `total` items.
pub fn count(total: u64, msg: &str) -> ProgressBar {
    bar(
        total,
        "{msg} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        msg,
    )
}
