use clap::Parser;

fn main() -> std::process::ExitCode {
    cap_malloc_arenas();
    let cli = flashsale::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(flashsale::cli::run(cli))
}

/// glibc gives each thread that allocates under contention an arena of its own, up to
/// 8 per core, and an arena keeps the pages it freed. The server's threads (the
/// runtime's, actix's workers, librdkafka's and lapin's) then hold what each once
/// needed: a 20-minute cluster soak ended at 228 MB resident while a heap profile of
/// the same load stayed under 90 MB (docs/operations.md, "Memory"). Two arenas bound
/// that. An arena limit set in the environment (`MALLOC_ARENA_MAX`, or
/// `glibc.malloc.arena_max` in `GLIBC_TUNABLES`) still decides.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cap_malloc_arenas() {
    let tuned = std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() && !tuned {
        // SAFETY: called before any other thread exists; mallopt only sets a limit.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}
