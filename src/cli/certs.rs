//! `proglog certs`: make a CA, server and client certificates (no cfssl needed).

use std::path::PathBuf;

use proglog::auth::certs::{self, Leaf, Validity};

use super::{BoxError, outln};

#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// Directory holding ca.pem/ca.key and receiving the new files.
    #[arg(long, default_value = "certs", global = true)]
    dir: PathBuf,
    /// Directory holding the CA's ca.pem/ca.key when it is not --dir (a
    /// read-only secret, say) [default: --dir].
    #[arg(long, global = true)]
    ca_dir: Option<PathBuf>,
    /// Validity in days.
    #[arg(long, global = true)]
    days: Option<i64>,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// A new certificate authority: ca.pem and ca.key [default validity: 3650 days].
    Ca,
    /// A node certificate signed by the CA, for the given DNS names and IP
    /// addresses: <name>.pem and <name>.key [default validity: 825 days].
    Server {
        /// A DNS name or IP address the node is reached at (repeat for more).
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// File name stem.
        #[arg(long, default_value = "server")]
        name: String,
    },
    /// A client certificate whose CN is the identity ACL policies name:
    /// <cn>.pem and <cn>.key [default validity: 825 days].
    Client {
        /// The identity, e.g. `root` or `nobody`.
        #[arg(long)]
        cn: String,
    },
}

pub fn run(args: CertsArgs) -> Result<(), BoxError> {
    let ca_dir = args.ca_dir.clone().unwrap_or_else(|| args.dir.clone());
    match args.what {
        What::Ca => {
            if args.dir.join("ca.pem").exists() {
                return Err(format!(
                    "{} already exists: refusing to replace a CA",
                    args.dir.join("ca.pem").display()
                )
                .into());
            }
            let ca = certs::new_ca("proglog CA", Validity::days(args.days.unwrap_or(3650)))?;
            let (cert, key) = certs::write(&args.dir, "ca", &ca)?;
            outln!("{}\n{}", cert.display(), key.display());
        }
        What::Server { hosts, name } => {
            let ca = certs::read(&ca_dir, "ca")?;
            let pem = certs::issue(
                &ca,
                &Leaf::Server { hosts },
                Validity::days(args.days.unwrap_or(825)),
            )?;
            let (cert, key) = certs::write(&args.dir, &name, &pem)?;
            outln!("{}\n{}", cert.display(), key.display());
        }
        What::Client { cn } => {
            if cn.is_empty() || cn.contains(['/', '\\']) {
                return Err(format!("bad --cn {cn:?}").into());
            }
            let ca = certs::read(&ca_dir, "ca")?;
            let pem = certs::issue(
                &ca,
                &Leaf::Client {
                    common_name: cn.clone(),
                },
                Validity::days(args.days.unwrap_or(825)),
            )?;
            let (cert, key) = certs::write(&args.dir, &cn, &pem)?;
            outln!("{}\n{}", cert.display(), key.display());
        }
    }
    Ok(())
}
