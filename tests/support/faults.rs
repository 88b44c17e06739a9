//! Service instances of a fault-injection test's own: a spare Redis, a spare RabbitMQ node and a
//! TCP proxy that can cut or stall a link.
//!
//! Other tests use the shared Redis on 127.0.0.1:6379 and RabbitMQ on 127.0.0.1:5672 at the same
//! time, so killing, restarting or flushing those would fail tests that have nothing to do with
//! the fault. Everything here runs on loopback ports of its own, keeps its data in a temp dir of
//! its own and is gone when dropped.
//!
//! The calls block (processes, sockets, sleeps) and need no async runtime, so they work from
//! plain tests. Inside a tokio runtime, run the slow ones (`SpareRabbit::start`, `stop`,
//! `start_again`, `restart`: seconds each) through `tokio::task::spawn_blocking`; the proxy
//! forwards on threads of its own and its controls return at once.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A loopback port nothing listens on right now, never the same one twice in this process (the
/// kernel may hand a just-released port to the next `bind(0)`, and tests pick ports side by
/// side, some for servers that are down for a while). Linux prefers odd ports for `bind(0)` and
/// even ones for outgoing connections, which keeps client sockets off a port while its server
/// restarts.
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if claim(port) {
            return port;
        }
    }
}

/// Records `port` as taken by this process; false if it already was.
fn claim(port: u16) -> bool {
    static TAKEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut taken = TAKEN.lock().unwrap_or_else(PoisonError::into_inner);
    if taken.contains(&port) {
        return false;
    }
    taken.push(port);
    true
}

/// Polls `ready` every `every` until it holds; panics with `what` and `context()` after `limit`.
fn wait_for(
    what: &str,
    limit: Duration,
    every: Duration,
    mut ready: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < limit,
            "{what} not within {limit:?}\n{}",
            context()
        );
        thread::sleep(every);
    }
}

/// The last `lines` lines of a log file, for panic messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    format!("--- {} ---\n{}", path.display(), all[from..].join("\n"))
}

/// Panics if `child` has exited, showing the end of its log.
fn assert_alive(child: &mut Child, name: &str, log: &Path) {
    if let Some(status) = child.try_wait().unwrap() {
        panic!("{name} exited ({status}) while starting\n{}", tail(log, 40));
    }
}

/// A `redis-server` of the test's own, on a free port with a temp dir for its data.
#[derive(Debug)]
pub struct SpareRedis {
    port: u16,
    aof: bool,
    tls: Option<TlsListener>,
    dir: TempDir,
    child: Option<Child>,
}

/// A TLS listener of a spare service: its port, the server's certificate and key, and the CA
/// whose client certificates it requires (PEM files).
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub port: u16,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsListener {
    /// A listener on a free port (not one of the CLI tools', see `SpareRabbit`) with the given
    /// PEM files.
    pub fn new(cert: &Path, key: &Path, ca: &Path) -> TlsListener {
        let port = loop {
            let port = free_port();
            if !CLI_DIST_PORTS.contains(&port) {
                break port;
            }
        };
        TlsListener {
            port,
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: ca.to_owned(),
        }
    }
}

impl SpareRedis {
    /// Starts one and waits until it answers. Without `aof` it persists nothing, like the
    /// deployed one (compose.yaml), so a restart comes back empty. With `aof`, every write
    /// reaches the append-only file before its reply (fsynced once a second), so acknowledged
    /// writes survive `kill` and `restart`.
    pub fn start(aof: bool) -> SpareRedis {
        let dir = tempfile::Builder::new()
            .prefix("ss-fault-redis-")
            .tempdir()
            .unwrap();
        let mut redis = SpareRedis {
            port: free_port(),
            aof,
            tls: None,
            dir,
            child: None,
        };
        redis.start_again();
        redis
    }

    /// Starts one that also listens with TLS, requiring client certificates signed by the
    /// listener's CA. The plain port stays, for `command` and readiness checks.
    pub fn start_tls(tls: TlsListener) -> SpareRedis {
        let dir = tempfile::Builder::new()
            .prefix("ss-tls-redis-")
            .tempdir()
            .unwrap();
        let mut redis = SpareRedis {
            port: free_port(),
            aof: false,
            tls: Some(tls),
            dir,
            child: None,
        };
        redis.start_again();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The `rediss://` URL of the TLS listener (`start_tls` only).
    pub fn tls_url(&self) -> String {
        let tls = self.tls.as_ref().expect("started with start_tls");
        format!("rediss://127.0.0.1:{}/", tls.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// SIGKILL, as a crash: nothing is saved on the way down, and clients see their
    /// connections end.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            child.wait().unwrap();
        }
    }

    /// Starts it again after `kill`, on the same port and data dir, and waits until it answers
    /// (after loading the append-only file). Does nothing while it runs.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let dir = self.dir.path();
        let log = dir.join("redis.log");
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .args(["--save", "", "--maxmemory-policy", "noeviction"]);
        if self.aof {
            command.args(["--appendonly", "yes", "--appendfsync", "everysec"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        if let Some(tls) = &self.tls {
            command
                .arg("--tls-port")
                .arg(tls.port.to_string())
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", "yes"]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server cannot be started (is it installed?)");
        let child = self.child.insert(child);
        let port = self.port;
        // Before the port is bound there is nothing to connect to; while the AOF loads, PING
        // answers -LOADING.
        wait_for(
            &format!("redis-server on port {port} answering PING"),
            Duration::from_secs(30),
            Duration::from_millis(20),
            || {
                assert_alive(child, "redis-server", &log);
                redis_call(port, &["PING"]).is_ok_and(|reply| reply == "+PONG")
            },
            || tail(&log, 20),
        );
    }

    /// `kill`, then `start_again`.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    pub fn flushall(&self) {
        assert_eq!(self.command(&["FLUSHALL"]), "+OK");
    }

    /// Sends one command and returns the first line of the reply (`+OK`, `:1`, `$5`, `-ERR …`).
    pub fn command(&self, args: &[&str]) -> String {
        redis_call(self.port, args)
            .unwrap_or_else(|e| panic!("redis on port {}: {args:?}: {e}", self.port))
    }
}

impl Drop for SpareRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One RESP request on a fresh connection; the first line of the reply.
fn redis_call(port: u16, args: &[&str]) -> std::io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    if line.is_empty() {
        return Err(ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end().to_owned())
}

/// A RabbitMQ node of the test's own: its own node name, AMQP and distribution ports, cookie,
/// config and data dir, sharing only epmd with the shared node. A fresh node is a healthy
/// single-node cluster, so quorum queues work on it.
#[derive(Debug)]
pub struct SpareRabbit {
    node: String,
    port: u16,
    dist_port: u16,
    tls: Option<TlsListener>,
    base: TempDir,
    child: Option<Child>,
}

/// The ports the CLI tools take for their own short-lived Erlang nodes (unless
/// RABBITMQ_CTL_DIST_PORT_MIN/_MAX say otherwise); a node listening there would collide with
/// every `rabbitmqctl` run.
const CLI_DIST_PORTS: std::ops::RangeInclusive<u16> = 35672..=35682;

impl SpareRabbit {
    /// Starts a fresh node and waits until it accepts AMQP connections and has finished booting.
    /// Takes several seconds; see the module docs about async callers.
    pub fn start() -> SpareRabbit {
        Self::start_with(None)
    }

    /// Starts a fresh node that also listens with TLS (`tls`'s port), requiring client
    /// certificates signed by its CA. The plain listener stays, for readiness checks.
    pub fn start_tls(tls: TlsListener) -> SpareRabbit {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<TlsListener>) -> SpareRabbit {
        static NODES: AtomicUsize = AtomicUsize::new(0);
        let n = NODES.fetch_add(1, Ordering::Relaxed);
        let rabbit_port = || loop {
            let port = free_port();
            if !CLI_DIST_PORTS.contains(&port) {
                return port;
            }
        };
        let base = tempfile::Builder::new()
            .prefix("ss-fault-rabbit-")
            .tempdir()
            .unwrap();
        let mut rabbit = SpareRabbit {
            node: format!("ss-fault-{}-{n}@localhost", std::process::id()),
            port: rabbit_port(),
            dist_port: rabbit_port(),
            tls,
            base,
            child: None,
        };
        rabbit.write_config();
        rabbit.start_again();
        rabbit
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The `amqps://` URL of the TLS listener (`start_tls` only).
    pub fn tls_url(&self) -> String {
        let tls = self.tls.as_ref().expect("started with start_tls");
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", tls.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Erlang node name, for `rabbitmqctl -n`.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Stops the node cleanly (`rabbitmqctl stop`) and waits until the process is gone, which can
    /// be seconds after the command returns. Does nothing while it is stopped.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let stopped = self.ctl(&["stop"]);
        if !stopped.status.success() {
            kill_group(&mut child);
            panic!(
                "rabbitmqctl stop failed on {}: {}{}",
                self.node,
                String::from_utf8_lossy(&stopped.stdout),
                String::from_utf8_lossy(&stopped.stderr)
            );
        }
        let started = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                kill_group(&mut child);
                panic!("{} still running 60 s after rabbitmqctl stop", self.node);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL to the node and its helper processes, as a crash. Quorum queues keep what they
    /// confirmed: their log is synced to disk before a publish is confirmed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
            // The wrapper script is reaped at once, but the Erlang VM, its child, may hold its
            // ports a little longer, and a node started meanwhile could not bind them.
            let ports = [self.port, self.dist_port];
            wait_for(
                &format!("{} releasing ports {ports:?}", self.node),
                Duration::from_secs(30),
                Duration::from_millis(10),
                || {
                    ports.iter().all(|&port| {
                        let addr = SocketAddr::from(([127, 0, 0, 1], port));
                        TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err()
                    })
                },
                String::new,
            );
        }
    }

    /// Starts the node again after `stop` or `kill`: same name, ports and data dir, so durable
    /// queues and their persistent messages are back. Waits as `start` does; does nothing while
    /// it runs. Quorum queues elect their leader a moment after the node reports booted, so the
    /// first operation on one may take a little longer.
    pub fn start_again(&mut self) {
        if self.child.is_some() {
            return;
        }
        let base = self.base.path().to_owned();
        // Before its file logging is configured, the node only writes to stdout.
        let console = base.join("console.log");
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&console)
            .unwrap();
        let mut command = self.tool("rabbitmq-server");
        command
            // For the node only: the CLI tools' Erlang nodes listen on `CLI_DIST_PORTS`.
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            // The script runs the Erlang VM as its own child, and the VM starts helpers of its
            // own: a process group of their own lets `kill` reach all of them.
            .process_group(0);
        let child = command
            .spawn()
            .expect("rabbitmq-server cannot be started (is it installed?)");
        let child = self.child.insert(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let node = &self.node;
        wait_for(
            &format!("{node} accepting AMQP on {addr}"),
            Duration::from_secs(120),
            Duration::from_millis(100),
            || {
                assert_alive(child, node, &console);
                TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok()
            },
            || tail(&console, 40),
        );
        self.rabbitmqctl(&["await_startup", "--timeout", "120"]);
    }

    /// `stop`, then `start_again`.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Closes every client connection on the node (clients see a connection-forced close).
    pub fn close_all_connections(&self) {
        self.rabbitmqctl(&["close_all_connections", "--global", "fault injection"]);
    }

    /// Runs `rabbitmqctl -n NODE ARGS` against this node; panics unless it succeeds, else
    /// returns its stdout.
    pub fn rabbitmqctl(&self, args: &[&str]) -> String {
        let output = self.ctl(args);
        assert!(
            output.status.success(),
            "rabbitmqctl {args:?} on {} failed: {}{}\n{}",
            self.node,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            tail(&self.base.path().join("console.log"), 20)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn ctl(&self, args: &[&str]) -> Output {
        self.tool("rabbitmqctl")
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .output()
            .expect("rabbitmqctl cannot be run")
    }

    /// A RabbitMQ script with the environment that points it at this node's files instead of
    /// the shared node's (/etc/rabbitmq, /var/lib/rabbitmq).
    fn tool(&self, name: &str) -> Command {
        // Debian's /usr/sbin wrappers re-run the tools as the `rabbitmq` user, who cannot read
        // this process's temp dirs and has another home, hence another cookie; the scripts they
        // wrap run as whoever calls them.
        let direct = Path::new("/usr/lib/rabbitmq/bin").join(name);
        let program = if direct.exists() {
            direct
        } else {
            PathBuf::from(name)
        };
        let base = self.base.path();
        let mut command = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RABBITMQ_") {
                command.env_remove(key);
            }
        }
        command
            .current_dir(base)
            // Erlang reads the cookie from $HOME/.erlang.cookie, for the node and the CLI alike.
            .env("HOME", base)
            // /etc/rabbitmq/rabbitmq-env.conf is the shared node's; an empty one keeps it out.
            .env("RABBITMQ_CONF_ENV_FILE", base.join("rabbitmq-env.conf"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_USE_LONGNAME", "false")
            // /etc/rabbitmq/rabbitmq.conf is the shared node's too, listener on 5672 included.
            .env("RABBITMQ_CONFIG_FILE", base.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                base.join("advanced.config"),
            )
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                base.join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", base.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", base.join("log"))
            .env("RABBITMQ_PID_FILE", base.join("rabbitmq.pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null());
        command
    }

    fn write_config(&self) {
        let base = self.base.path();
        let mut cookie = OpenOptions::new()
            .write(true)
            .create_new(true)
            // Erlang refuses a cookie others can read.
            .mode(0o400)
            .open(base.join(".erlang.cookie"))
            .unwrap();
        let random = std::collections::hash_map::RandomState::new();
        let text: String = (0..20u64)
            .map(|i| char::from(b'A' + (random.hash_one(i) % 26) as u8))
            .collect();
        cookie.write_all(text.as_bytes()).unwrap();
        fs::write(base.join("rabbitmq-env.conf"), "").unwrap();
        let mut config = format!("listeners.tcp.1 = 127.0.0.1:{}\n", self.port);
        if let Some(tls) = &self.tls {
            config.push_str(&format!(
                "listeners.ssl.1 = 127.0.0.1:{}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_peer\n\
                 ssl_options.fail_if_no_peer_cert = true\n",
                tls.port,
                tls.ca.display(),
                tls.cert.display(),
                tls.key.display()
            ));
        }
        fs::write(base.join("rabbitmq.conf"), config).unwrap();
        // The management and prometheus plugins listen on fixed ports (15672, 15692), which a
        // second node would contend for with the shared one.
        fs::write(base.join("enabled_plugins"), "[].\n").unwrap();
    }
}

impl Drop for SpareRabbit {
    /// Kills rather than stops: the data goes with the temp dir anyway, and a clean stop takes
    /// seconds.
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGKILL to `child`'s process group (it leads its own), then reaps it.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// A TCP proxy on a loopback port of its own to `target`, for putting a fault between a client
/// and a service: `cut` ends every connection and refuses new ones, `stall` keeps connections
/// open but lets nothing through, `restore` forwards again.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    target: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<ProxyState>,
    changed: Condvar,
}

#[derive(Debug)]
struct ProxyState {
    mode: Mode,
    listener: Option<TcpListener>,
    /// Both sockets of each open connection, so `cut` can shut them from outside their threads.
    links: HashMap<u64, [TcpStream; 2]>,
    next_link: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forwarding,
    Stalled,
    Cut,
    Closed,
}

impl Proxy {
    /// Starts forwarding at once.
    pub fn start(target: SocketAddr) -> Proxy {
        // Claimed like `free_port`'s, so no spare server that is down picks it up while `cut`
        // has it closed, nor the proxy a port such a server will come back on.
        let (listener, port) = loop {
            let listener = listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
            let port = listener.local_addr().unwrap().port();
            if claim(port) {
                break (listener, port);
            }
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(ProxyState {
                mode: Mode::Forwarding,
                listener: Some(listener),
                links: HashMap::new(),
                next_link: 0,
            }),
            changed: Condvar::new(),
        });
        let acceptor = thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn({
                let shared = Arc::clone(&shared);
                move || accept_loop(&shared, target)
            })
            .unwrap();
        Proxy {
            port,
            target,
            shared,
            acceptor: Some(acceptor),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Shuts down both sides of every open connection and closes the listening socket, so new
    /// connections are refused, as when the service goes away. Bytes held by `stall` are dropped.
    pub fn cut(&self) {
        let mut state = self.shared.lock();
        state.mode = Mode::Cut;
        state.listener = None;
        state.sever_all();
        self.shared.changed.notify_all();
    }

    /// Black-holes the link: open connections stay open but no byte, nor end of stream, passes
    /// in either direction, and new connections are accepted and held the same way — a network
    /// that stopped delivering without telling either end, which only timeouts and heartbeats
    /// notice. `restore` delivers what was held; `cut` drops it.
    pub fn stall(&self) {
        self.open(Mode::Stalled);
    }

    /// Forwards again after `cut` or `stall`, on the same port.
    pub fn restore(&self) {
        self.open(Mode::Forwarding);
    }

    fn open(&self, mode: Mode) {
        let closed = self.shared.lock().listener.is_none();
        // Bound before returning, so a client that connects right after `restore` gets through.
        let listener = closed.then(|| self.rebind());
        let mut state = self.shared.lock();
        if state.listener.is_none() {
            state.listener = listener;
        }
        state.mode = mode;
        self.shared.changed.notify_all();
    }

    /// The port again. The connections `cut` closed linger in TIME_WAIT on it, which does not
    /// stop the bind because std sets SO_REUSEADDR on Unix listeners; the retries cover another
    /// socket having taken the port meanwhile and going away again.
    fn rebind(&self) -> TcpListener {
        let started = Instant::now();
        loop {
            match listen(self.addr()) {
                Ok(listener) => return listener,
                Err(e) if started.elapsed() > Duration::from_secs(5) => {
                    panic!("proxy cannot listen on {} again: {e}", self.addr())
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.mode = Mode::Closed;
            state.listener = None;
            state.sever_all();
        }
        self.shared.changed.notify_all();
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ProxyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks while the proxy is stalled; false once connection `id` has been cut.
    fn await_forwarding(&self, id: u64) -> bool {
        let mut state = self.lock();
        loop {
            if !state.links.contains_key(&id) {
                return false;
            }
            if state.mode == Mode::Forwarding {
                return true;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl ProxyState {
    fn sever_all(&mut self) {
        for (_, [client, upstream]) in self.links.drain() {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}

/// A non-blocking listener: the accept loop polls it, so `cut` can close it without first waking
/// a thread blocked in `accept`.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn accept_loop(shared: &Arc<Shared>, target: SocketAddr) {
    loop {
        let accepted = {
            let state = shared.lock();
            if state.mode == Mode::Closed {
                return;
            }
            state.listener.as_ref().map(TcpListener::accept)
        };
        match accepted {
            Some(Ok((client, _))) => {
                let shared = Arc::clone(shared);
                thread::spawn(move || link(&shared, client, target));
            }
            _ => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Carries one connection: client to target on this thread, target to client on another.
fn link(shared: &Arc<Shared>, client: TcpStream, target: SocketAddr) {
    // Accepted sockets inherit O_NONBLOCK on some systems.
    if client.set_nonblocking(false).is_err() {
        return;
    }
    let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
        return;
    };
    // Small protocol frames (heartbeats, acks) must not wait for Nagle on top of the service's.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (Ok(client_back), Ok(upstream_back)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let id = {
        let mut state = shared.lock();
        if matches!(state.mode, Mode::Cut | Mode::Closed) {
            return;
        }
        let (Ok(client_ref), Ok(upstream_ref)) = (client.try_clone(), upstream.try_clone()) else {
            return;
        };
        let id = state.next_link;
        state.next_link += 1;
        state.links.insert(id, [client_ref, upstream_ref]);
        id
    };
    let back = {
        let shared = Arc::clone(shared);
        thread::spawn(move || pump(&shared, id, &upstream_back, &client_back))
    };
    pump(shared, id, &client, &upstream);
    let _ = back.join();
    shared.lock().links.remove(&id);
}

/// Copies `from` to `to` until end of stream, which it passes on as a half-close.
fn pump(shared: &Shared, id: u64, mut from: &TcpStream, mut to: &TcpStream) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let read = from.read(&mut buf);
        // What was read (data, end of stream or error) waits out a stall before it counts.
        if !shared.await_forwarding(id) {
            return;
        }
        match read {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_ok() {
                    continue;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {}
        }
        // A reset or failed write on one side ends the connection on both, as it would end a
        // direct one.
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
        return;
    }
}
