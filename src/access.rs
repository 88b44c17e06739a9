//! `starkscale access`: the accounts of a deployment, as files its Redis and RabbitMQ load at
//! start (`files`), or as each role's rules for services run by someone else (`rules`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use starkscale_common::access::{rabbitmq_permissions, redis_rules, AccessFiles, Role};
use starkscale_common::broker::Topology;

#[derive(Subcommand, Debug)]
pub enum AccessCommand {
    /// Write `users.acl` (Redis `aclfile`) and `definitions.json` (RabbitMQ
    /// `load_definitions`) for an administrator and the coordinator, worker and client roles.
    /// Passwords come from STARKSCALE_ADMIN_PASSWORD and STARKSCALE_{COORDINATOR,WORKER,
    /// CLIENT}_PASSWORD; the files hold only their hashes.
    Files(FilesArgs),
    /// Print each role's Redis ACL rules and RabbitMQ permissions.
    Rules(RulesArgs),
}

#[derive(Args, Debug)]
pub struct FilesArgs {
    /// Directory to write the two files to.
    #[arg(long)]
    pub out: PathBuf,
    /// Prefix of the fleet's queue, exchange and key names.
    #[arg(long, env = "STARKSCALE_PREFIX", default_value = "starkscale")]
    pub prefix: String,
    /// RabbitMQ virtual host the permissions are on.
    #[arg(long, default_value = "/")]
    pub vhost: String,
}

#[derive(Args, Debug)]
pub struct RulesArgs {
    #[arg(long, env = "STARKSCALE_PREFIX", default_value = "starkscale")]
    pub prefix: String,
}

pub fn access(command: AccessCommand) -> Result<()> {
    match command {
        AccessCommand::Files(args) => {
            let files = AccessFiles::new(&args.prefix, |env| std::env::var(env).ok())?;
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("creating {}", args.out.display()))?;
            for (name, text) in [
                ("users.acl", files.redis_acl()),
                (
                    "definitions.json",
                    serde_json::to_string_pretty(&files.rabbitmq_definitions(&args.vhost))?,
                ),
            ] {
                let path = args.out.join(name);
                write_file(&path, text.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
        AccessCommand::Rules(args) => {
            let topology = Topology::new(args.prefix.clone());
            for role in Role::ALL {
                let p = rabbitmq_permissions(role, &topology);
                let user = role.user(&args.prefix);
                println!("# {user}");
                println!(
                    "redis: ACL SETUSER {user} on >PASSWORD {}",
                    redis_rules(role, &args.prefix).join(" ")
                );
                println!(
                    "rabbitmq: rabbitmqctl set_permissions -p / {user} '{}' '{}' '{}'",
                    p.configure, p.write, p.read
                );
            }
            Ok(())
        }
    }
}

/// Writes `bytes` readable by all but writable by its owner only: the services that load the
/// files run as their own users (RabbitMQ's is not root), and the files hold hashes, never a
/// password; keep them on a volume only those services mount.
fn write_file(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)?;
    file.write_all(bytes)
}
