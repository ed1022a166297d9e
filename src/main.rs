use clap::Parser;

/// Every request, message and batch allocates: under load glibc's malloc and free took
/// a sixth of the server's CPU (perf), mimalloc a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = flashsale::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(flashsale::cli::run(cli))
}
