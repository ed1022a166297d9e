use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = flashsale_load::Cli::parse();
    std::process::exit(flashsale_load::main_with(cli).await);
}
