//! The bench's progress bar (indicatif, on standard error): shown only when standard error is
//! a terminal and the run is expected to last more than a few seconds, so logs and scripts
//! never see it.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Runs expected to be shorter than this get no bar.
const MIN_EXPECTED_S: f64 = 3.0;

#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for a run of `total` requests expected to take `expected_s` seconds (`None`:
    /// unknown, as for a burst or a ramp, which always get one).
    pub fn new(label: &str, total: u64, expected_s: Option<f64>) -> Progress {
        let wanted = std::io::stderr().is_terminal()
            && std::env::var_os("CONVEYOR_NO_PROGRESS").is_none()
            && expected_s.is_none_or(|s| s > MIN_EXPECTED_S);
        let bar = wanted.then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template(
                    "{prefix:>9} [{elapsed_precise}] {wide_bar} {pos}/{len} requests done ({per_sec})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_prefix(label.to_string());
            b.enable_steady_tick(Duration::from_millis(250));
            b
        });
        Progress { bar }
    }

    /// `done` requests completed so far.
    pub fn set(&self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }

    /// Whether anything is drawn.
    pub fn shown(&self) -> bool {
        self.bar.is_some()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
