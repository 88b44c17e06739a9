//! A process's peak memory, as Linux reports it. Workers and benchmarks measure each proof's peak
//! on its own (reset before, read after), so a leak shows as peaks that grow from task to task.

/// Peak resident set size of this process since start or the last [`reset_peak_rss`] (Linux
/// `VmHWM`), 0 where unavailable.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Resets the peak to the current resident set size (`clear_refs` value 5); a no-op where
/// unavailable.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
