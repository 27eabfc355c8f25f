//! The progress bars of one-shot commands. They draw on a terminal only (indicatif hides
//! them otherwise), so logs and pipes stay clean.

use indicatif::{ProgressBar, ProgressStyle};
use std::time::Duration;

/// The one bar style: `{msg} [=====>    ] 3/10 files 00:00:04 eta 6s`.
fn counted(unit: &str) -> ProgressStyle {
    ProgressStyle::with_template(&format!(
        "{{msg}} [{{bar:40}}] {{pos}}/{{len}}{unit} {{elapsed_precise}} eta {{eta}}"
    ))
    .expect("valid template")
    .progress_chars("=> ")
}

/// A bar over `total` input files.
pub fn files(total: usize, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    bar.set_style(counted(""));
    bar.set_message(message);
    bar
}

/// A tile bar: a spinner until the tile count is known (never a full bar at "0/0 tiles"),
/// then the bar.
pub fn tiles(message: String) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} {spinner} planning tiles {elapsed_precise}")
            .expect("valid template"),
    );
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Moves a [`tiles`] bar to `done` of `total` tiles.
pub fn show_tiles(bar: &ProgressBar, done: usize, total: usize) {
    if total == 0 {
        return;
    }
    if bar.length() != Some(total as u64) {
        bar.set_style(counted(" tiles"));
        bar.set_length(total as u64);
    }
    bar.set_position(done as u64);
}

/// A bar over the rows of an image, shown for large images only (as imgproxyproc does).
pub fn rows(total: u64, label: &'static str) -> ProgressBar {
    if total < 2000 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(counted(" rows"));
    bar.set_message(label);
    bar
}
