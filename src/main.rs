fn main() -> std::process::ExitCode {
    tune_allocator();
    starkscale::cli::main()
}

/// glibc raises its mmap threshold as large blocks are freed, after which proving buffers of tens
/// of megabytes come from the heap and stay resident when freed: at the default tile that was
/// ~0.5 GB of peak RSS (4.0-4.1 GB instead of ~3.6 GB). A fixed trim threshold keeps large blocks
/// mmapped, so they go back to the OS when freed; proving speed is unchanged (docs/bench.md).
#[allow(unsafe_code)]
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in main, before any other thread exists or allocates; mallopt
    // only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 0);
    }
}
