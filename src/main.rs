use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = flashsale::cli::Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(flashsale::cli::run(cli))
}
