//! Diagnostics on stderr, each line prefixed with `hearth:` and the time since start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static VERBOSE: AtomicBool = AtomicBool::new(false);
static START: OnceLock<Instant> = OnceLock::new();

/// Marks the start of the process (the reference for every logged time). The first call
/// wins; call it as early as possible.
pub fn mark_start() -> Instant {
    *START.get_or_init(Instant::now)
}

/// Milliseconds since [`mark_start`].
pub fn elapsed_ms() -> f64 {
    mark_start().elapsed().as_secs_f64() * 1000.0
}

/// Turns debug lines on or off.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// Whether debug lines are printed.
pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// Prints a line to stderr.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {
        eprintln!("hearth: [{:9.3} ms] {}", $crate::logger::elapsed_ms(), format_args!($($arg)*))
    };
}

/// Prints a line to stderr with `--verbose`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::logger::verbose() {
            $crate::info!($($arg)*);
        }
    };
}
