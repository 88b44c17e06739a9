//! Least privilege: what each role of a deployment may do in Redis and in RabbitMQ, written once
//! as data that the services themselves enforce (Redis ACL users, RabbitMQ user permissions).
//!
//! - [`Role`]: the coordinator (owns the topology and every job's state), workers (read task
//!   inputs, write task proofs, report events — nothing else) and clients (submit jobs, upload
//!   inputs and models, read results).
//! - [`redis_rules`] / [`rabbitmq_permissions`]: a role's rules for one name prefix.
//! - [`AccessFiles`]: the files a deployment loads at start (a Redis `aclfile`, RabbitMQ
//!   definitions), with hashed passwords; `starkscale access files` writes them.
//!
//! Why each rule is safe to grant, and what a holder of each role's password can still do, is in
//! `docs/security.md`.

use base64::Engine as _;
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use crate::broker::Topology;

/// A kind of process that holds credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Coordinator,
    Worker,
    Client,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Coordinator, Role::Worker, Role::Client];

    pub fn name(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Worker => "worker",
            Role::Client => "client",
        }
    }

    /// The user name this role has in Redis and in RabbitMQ, for the fleet of `prefix`: fleets
    /// sharing services keep apart accounts as well as names.
    pub fn user(self, prefix: &str) -> String {
        format!("{prefix}-{}", self.name())
    }

    /// The environment variable that holds this role's password for [`AccessFiles`].
    pub fn password_env(self) -> &'static str {
        match self {
            Role::Coordinator => "STARKSCALE_COORDINATOR_PASSWORD",
            Role::Worker => "STARKSCALE_WORKER_PASSWORD",
            Role::Client => "STARKSCALE_CLIENT_PASSWORD",
        }
    }
}

/// `text` as a Redis glob matching only itself.
fn glob_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `text` as a (PCRE) regular expression matching only itself: every character that is not a
/// letter, digit or underscore is escaped, which PCRE reads as that character.
fn regex_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The Redis ACL rules of `role` under `prefix` (as `ACL SETUSER` takes them, after the user
/// name; passwords are not among them).
///
/// Key patterns follow [`crate::messages::Keys`]. Job ids are `[A-Za-z0-9._-]`, so no key of
/// another kind (a result, a plan) can match a worker's `…:task:*:proof:*` pattern.
pub fn redis_rules(role: Role, prefix: &str) -> Vec<String> {
    let p = glob_literal(prefix);
    let mut rules = vec![
        "resetkeys".to_string(),
        "resetchannels".into(),
        "-@all".into(),
    ];
    match role {
        Role::Coordinator => {
            // Everything under its prefix, without administration of the server itself.
            rules.push(format!("~{p}:*"));
            rules.extend(["+@all", "-@admin", "-@dangerous"].map(String::from));
        }
        Role::Worker => {
            rules.push(format!("%R~{p}:job:*:task:*:input"));
            rules.push(format!("%W~{p}:job:*:task:*:proof:*"));
            // GET, and the ranged reads a large input is read in; SETEX writes a proof.
            rules.extend(["+get", "+strlen", "+getrange", "+setex", "+ping"].map(String::from));
        }
        Role::Client => {
            for kind in [
                "result",
                "progress",
                "y",
                "certificate",
                "certificate:part:*",
            ] {
                rules.push(format!("%R~{p}:job:*:{kind}"));
            }
            rules.push(format!("%W~{p}:input:*"));
            rules.push(format!("%W~{p}:model:*"));
            rules.extend(["+get", "+strlen", "+getrange", "+setex", "+ping"].map(String::from));
        }
    }
    rules
}

/// A role's RabbitMQ permissions on its virtual host: regular expressions over the names of the
/// queues and exchanges it may configure (declare, delete), write (publish to, bind) and read
/// (consume from, bind from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// The RabbitMQ permissions of `role` in `topology`.
///
/// Workers and clients publish through exchanges of their own ([`Topology::event_intake`],
/// [`Topology::job_intake`]), never through the default exchange, since write permission on
/// that one would let them route a message to any queue: a worker could submit jobs or cancel
/// them, a client could report task events.
pub fn rabbitmq_permissions(role: Role, topology: &Topology) -> Permissions {
    let exact = |names: &[String]| {
        let alternatives: Vec<String> = names.iter().map(|n| regex_literal(n)).collect();
        format!("^({})$", alternatives.join("|"))
    };
    // Queues a client declares for itself to hear results (server-named, exclusive).
    let own_queues = "amq\\.gen-.*".to_string();
    match role {
        Role::Coordinator => {
            let all = format!("^{}\\..*", regex_literal(topology.prefix()));
            Permissions {
                configure: all.clone(),
                // The default exchange: replies to a client's reply_to queue, dead letters.
                write: format!("{all}|^amq\\.default$"),
                read: all,
            }
        }
        Role::Worker => Permissions {
            configure: "^$".into(),
            write: exact(&[topology.event_intake()]),
            read: exact(&[topology.tasks()]),
        },
        Role::Client => Permissions {
            configure: format!("^{own_queues}$"),
            // Binding its own queue needs write on that queue and read on the results exchange.
            write: format!("^({}|{own_queues})$", regex_literal(&topology.job_intake())),
            read: format!("^({}|{own_queues})$", regex_literal(&topology.results())),
        },
    }
}

/// The password hash Redis keeps for an ACL user (`#<hex>` in a rule).
fn redis_password_hash(password: &str) -> String {
    hex::encode(Sha256::digest(password.as_bytes()))
}

/// RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ‖ SHA-256(salt ‖ password)) with a
/// random 4-byte salt.
fn rabbitmq_password_hash(password: &str) -> String {
    let mut salt = [0u8; 4];
    rand::thread_rng().fill_bytes(&mut salt);
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&hasher.finalize());
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Why the access files could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{0} is not set (each role needs its own password)")]
    Missing(&'static str),
    #[error("{0} is shorter than {MIN_PASSWORD_CHARS} characters")]
    Short(&'static str),
    #[error("{0} holds characters other than letters, digits, '-' and '_' (it must fit in a URL unescaped)")]
    Charset(&'static str),
    #[error("two roles share one password ({0} and {1})")]
    Shared(&'static str, &'static str),
}

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 16;
/// The environment variable with the administrator's password (RabbitMQ management, Redis
/// operations); the administrator is not a fleet role and nothing in the fleet uses it.
pub const ADMIN_PASSWORD_ENV: &str = "STARKSCALE_ADMIN_PASSWORD";

/// One account: a role's (or the administrator's) user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub role: Option<Role>,
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("role", &self.role)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Account {
    fn checked(
        role: Option<Role>,
        user: &str,
        env: &'static str,
        password: Option<String>,
    ) -> Result<Account, AccessError> {
        let password = password
            .filter(|p| !p.is_empty())
            .ok_or(AccessError::Missing(env))?;
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(AccessError::Short(env));
        }
        if !password
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(AccessError::Charset(env));
        }
        Ok(Account {
            role,
            user: user.to_string(),
            password,
        })
    }
}

/// Every account of a deployment, and the files that create them in Redis and RabbitMQ.
#[derive(Debug, Clone)]
pub struct AccessFiles {
    pub prefix: String,
    pub accounts: Vec<Account>,
}

impl AccessFiles {
    /// The administrator and one account per role, with passwords looked up by `password`
    /// (given an environment variable's name; `std::env::var` in a deployment).
    pub fn new(
        prefix: &str,
        password: impl Fn(&'static str) -> Option<String>,
    ) -> Result<AccessFiles, AccessError> {
        let mut accounts = vec![Account::checked(
            None,
            &format!("{prefix}-admin"),
            ADMIN_PASSWORD_ENV,
            password(ADMIN_PASSWORD_ENV),
        )?];
        for role in Role::ALL {
            let env = role.password_env();
            let user = role.user(prefix);
            accounts.push(Account::checked(Some(role), &user, env, password(env))?);
        }
        let env_of = |a: &Account| a.role.map_or(ADMIN_PASSWORD_ENV, Role::password_env);
        for (i, a) in accounts.iter().enumerate() {
            if let Some(b) = accounts[..i].iter().find(|b| b.password == a.password) {
                return Err(AccessError::Shared(env_of(b), env_of(a)));
            }
        }
        Ok(AccessFiles {
            prefix: prefix.to_string(),
            accounts,
        })
    }

    /// A Redis ACL file (`aclfile`): the default user off, the administrator with every
    /// permission, and each role with its rules. Passwords appear only as SHA-256 hashes.
    pub fn redis_acl(&self) -> String {
        let mut out = String::from("user default off resetkeys resetchannels -@all\n");
        for account in &self.accounts {
            let rules = match account.role {
                Some(role) => redis_rules(role, &self.prefix).join(" "),
                None => "~* &* +@all".to_string(),
            };
            out.push_str(&format!(
                "user {} on #{} {rules}\n",
                account.user,
                redis_password_hash(&account.password)
            ));
        }
        out
    }

    /// RabbitMQ definitions (`load_definitions`, or `rabbitmqctl import_definitions`) for
    /// `vhost`: the administrator (tag `administrator`, for the management UI and KEDA's queue
    /// readings) and each role with its permissions. Passwords appear only as salted hashes.
    pub fn rabbitmq_definitions(&self, vhost: &str) -> serde_json::Value {
        let topology = Topology::new(self.prefix.clone());
        let users: Vec<serde_json::Value> = self
            .accounts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.user,
                    "password_hash": rabbitmq_password_hash(&a.password),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": if a.role.is_none() { vec!["administrator"] } else { vec![] },
                })
            })
            .collect();
        let permissions: Vec<serde_json::Value> = self
            .accounts
            .iter()
            .map(|a| {
                let p = match a.role {
                    Some(role) => rabbitmq_permissions(role, &topology),
                    None => Permissions {
                        configure: ".*".into(),
                        write: ".*".into(),
                        read: ".*".into(),
                    },
                };
                serde_json::json!({
                    "user": a.user, "vhost": vhost,
                    "configure": p.configure, "write": p.write, "read": p.read,
                })
            })
            .collect();
        serde_json::json!({
            "users": users,
            "vhosts": [{ "name": vhost }],
            "permissions": permissions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_matched_literally() {
        assert_eq!(glob_literal("a*b?[c]"), "a\\*b\\?\\[c\\]");
        assert_eq!(regex_literal("star.kale-1"), "star\\.kale\\-1");
        let worker = rabbitmq_permissions(Role::Worker, &Topology::new("s.x"));
        assert_eq!(worker.read, "^(s\\.x\\.tasks)$");
        assert_eq!(worker.configure, "^$");
    }

    #[test]
    fn passwords_are_checked_and_only_hashes_are_written() {
        let strong = |env: &'static str| Some(format!("{env}-0123456789abcdef"));
        let files = AccessFiles::new("starkscale", strong).unwrap();
        let acl = files.redis_acl();
        let definitions = files.rabbitmq_definitions("/").to_string();
        for account in &files.accounts {
            assert!(!acl.contains(&account.password), "{acl}");
            assert!(!definitions.contains(&account.password));
        }
        assert!(acl.starts_with("user default off"));
        assert_eq!(acl.lines().count(), 5);
        // RabbitMQ's hash: a 4-byte salt, then SHA-256 of salt and password.
        let hash = files.rabbitmq_definitions("/")["users"][2]["password_hash"]
            .as_str()
            .unwrap()
            .to_string();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(hash)
            .unwrap();
        let mut expected = Sha256::new();
        expected.update(&raw[..4]);
        expected.update(files.accounts[2].password.as_bytes());
        assert_eq!(&raw[4..], expected.finalize().as_slice());

        let missing = AccessFiles::new("p", |env| {
            (env != "STARKSCALE_WORKER_PASSWORD")
                .then(|| strong(env))
                .flatten()
        });
        assert!(matches!(
            missing,
            Err(AccessError::Missing("STARKSCALE_WORKER_PASSWORD"))
        ));
        let short = AccessFiles::new("p", |_| Some("short".into()));
        assert!(matches!(short, Err(AccessError::Short(_))));
        let shared = AccessFiles::new("p", |env| match env {
            ADMIN_PASSWORD_ENV | "STARKSCALE_CLIENT_PASSWORD" => {
                Some("same-password-1234567".into())
            }
            _ => strong(env),
        });
        assert!(matches!(
            shared,
            Err(AccessError::Shared(
                ADMIN_PASSWORD_ENV,
                "STARKSCALE_CLIENT_PASSWORD"
            ))
        ));
        let url_unsafe = AccessFiles::new("p", |env| strong(env).map(|p| format!("{p}@:/")));
        assert!(matches!(url_unsafe, Err(AccessError::Charset(_))));
    }
}
