use std::process::ExitCode;

fn main() -> ExitCode {
    // Second derivatives need Candle's keep-the-graph mode, and small ops are far faster on a
    // one-thread pool (docs/CANDLE.md). An explicit setting by the user wins, so that
    // `CANDLE_GRAD_DO_NOT_DETACH=0` can be used to check the mode guard.
    for (key, value) in [("CANDLE_GRAD_DO_NOT_DETACH", "1"), ("RAYON_NUM_THREADS", "1")] {
        if std::env::var_os(key).is_none() {
            // SAFETY: the first statement of main, before any other thread exists.
            unsafe { std::env::set_var(key, value) };
        }
    }
    // Die quietly on a closed pipe (`cml sweep ... | head`) instead of panicking in println.
    // SAFETY: restores the default disposition of one signal before any thread exists.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    cml::tune_allocator();
    cml::cli::run()
}
