//! Crash points for the fault-injection tests: `STARKSCALE_CRASH_AT` names points (comma
//! separated) where the process aborts at once, as a SIGKILL would stop it, so that a test can
//! stop a coordinator or a worker exactly between two writes. Unset — as it is everywhere but in
//! those tests — a crash point costs one load of a static.

use std::sync::OnceLock;

/// The variable naming the crash points.
pub const CRASH_AT_VAR: &str = "STARKSCALE_CRASH_AT";

fn armed() -> &'static [String] {
    static POINTS: OnceLock<Vec<String>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var(CRASH_AT_VAR)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Aborts the process if `point` is armed.
pub fn crash_point(point: &str) {
    if armed().iter().any(|p| p == point) {
        crash(point);
    }
}

/// Aborts the process if the point that `point()` names is armed; the name is only built when
/// some point is.
pub fn crash_point_with(point: impl FnOnce() -> String) {
    if !armed().is_empty() {
        crash_point(&point());
    }
}

fn crash(point: &str) -> ! {
    eprintln!("crash point {point} reached: aborting");
    std::process::abort()
}
