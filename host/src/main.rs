use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use wsroom::config::{Cli, Command, LogFormat};

// jemalloc: measured here against the system allocator, less memory per idle
// connection and no loss of throughput; room instances in an arena of their
// own (`wsroom::alloc`).
#[global_allocator]
static GLOBAL: wsroom::alloc::Allocator = wsroom::alloc::Allocator;

/// jemalloc's options (its `malloc_conf`, read at start; the
/// `_RJEM_MALLOC_CONF` environment variable still overrides them). A
/// background thread returns freed pages to the kernel as they age (10 s):
/// without it, jemalloc purges only when the process allocates, so a server
/// whose rooms went idle and hibernated kept their instances' pages
/// (measured: 32.6 KB per idle project with its client, 18.5 KB with it).
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_CONF: JemallocConf = JemallocConf(c"background_thread:true".as_ptr());

#[repr(transparent)]
struct JemallocConf(*const std::ffi::c_char);
// SAFETY: a pointer to a static, immutable C string.
unsafe impl Sync for JemallocConf {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        // Colours for a terminal only: no escape codes in a file or journal.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    if let Err(e) = wsroom::alloc::init() {
        tracing::warn!("{e}: room instances share the allocator's arenas");
    }
    match &cli.command {
        Some(Command::Token(args)) => {
            println!("{}", args.mint()?);
            return Ok(());
        }
        Some(Command::Check { components }) => {
            // Every file gets its verdict; the exit status fails if one
            // does not fit.
            let config = cli.config()?;
            let mut misfits = 0;
            for path in components {
                match wsroom::check_component(&config, path) {
                    Ok(version) => println!(
                        "{}: fits the wsroom:room/room world (built against {version})",
                        path.display()
                    ),
                    Err(e) => {
                        eprintln!("{}: {e:#}", path.display());
                        misfits += 1;
                    }
                }
            }
            anyhow::ensure!(
                misfits == 0,
                "{misfits} of {} components do not fit",
                components.len()
            );
            return Ok(());
        }
        Some(Command::Health { url, timeout_secs }) => {
            let url = &url
                .clone()
                .unwrap_or_else(|| wsroom::local_health_url(cli.listen));
            let timeout = std::time::Duration::from_secs(*timeout_secs);
            let answer = tokio::time::timeout(timeout, wsroom::health_check(url))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout_secs} s")));
            match answer {
                Ok(body) => {
                    println!("{body}");
                    return Ok(());
                }
                Err(e) => {
                    eprintln!("{url}: {e:#}");
                    std::process::exit(1);
                }
            }
        }
        Some(Command::Data { action }) => {
            print!("{}", wsroom::read_data(&cli.data.data_dir, action)?);
            return Ok(());
        }
        None => {}
    }
    let config = cli.config()?;
    let listener = wsroom::listen::bind(cli.listen, cli.listen_backlog)
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    wsroom::run(listener, config, wsroom::shutdown_signal()).await
}
