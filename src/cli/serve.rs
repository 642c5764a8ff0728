//! `proglog serve`.

use proglog::agent::{Agent, Stopped};
use proglog::config::{NodeConfig, ServeArgs};

use super::BoxError;

pub fn run(args: ServeArgs) -> Result<(), BoxError> {
    let print_config = args.print_config;
    let config = NodeConfig::resolve(args)?;
    if print_config {
        use std::io::Write as _;
        write!(std::io::stdout().lock(), "{}", config.to_toml())?;
        return Ok(());
    }
    super::block_on(async move {
        let agent = Agent::start(config).await?;
        let c = agent.config();
        tracing::info!(
            node = %c.node_name,
            partition = %agent.partitions().own_id(),
            rpc = %agent.rpc_addr(),
            gossip = %agent.gossip_addr(),
            http = %agent.http_addr(),
            "proglog node is serving"
        );
        // One machine-readable line on stdout when ready (tests and scripts
        // started with port 0 read the real ports from it). A node whose
        // standard output has no reader keeps serving: the line is also
        // in the log above.
        let ready = {
            use std::io::Write as _;
            writeln!(
                std::io::stdout().lock(),
                "ready rpc={} gossip={} partition={} http={}",
                agent.rpc_addr(),
                agent.gossip_addr(),
                agent.partitions().own_id(),
                agent.http_addr()
            )
        };
        if let Err(e) = ready {
            tracing::warn!(error = %e, "cannot print the ready line on standard output");
        }
        let signal = async {
            wait_for_signal().await;
            tracing::info!("shutting down (a second signal exits at once)");
            actix_rt::spawn(async {
                wait_for_signal().await;
                eprintln!("proglog: second signal: exiting now");
                std::process::exit(130);
            });
        };
        // A failure that escalated to the root also ends here, after the
        // same graceful shutdown, as an error: exit status 1.
        match agent.run_until(signal).await? {
            Stopped::Requested => {
                tracing::info!("stopped cleanly");
                Ok(())
            }
            Stopped::Escalated(reason) => {
                Err(format!("stopped after a failure escalated to the root: {reason}").into())
            }
        }
    })
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
