//! Support for the services' tests (feature `testing`, enabled by their dev-dependencies only):
//! running a service's binary as a child process, reading its metrics, and certificates for TLS.

use std::time::Duration;

/// A bound on how long a test waits for something that must happen; reaching it is a failure, never
/// a way of waiting for time to pass.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Runs `command` to its end: its exit code, standard output and standard error.
pub fn output(command: &mut std::process::Command) -> (Option<i32>, String, String) {
    let out = command
        .stdout(std::process::Stdio::piped())
        .output()
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A service's binary, running as a child process with JSON logs on a pipe: for what only a real
/// process shows (signals, exit codes, flags, the environment, `/metrics`).
pub struct Process {
    child: Option<std::process::Child>,
    pub addr: std::net::SocketAddr,
    /// The metrics endpoint, when one was asked for.
    pub metrics: Option<std::net::SocketAddr>,
    /// Every log line after the ones that announced the addresses.
    pub logs: std::sync::mpsc::Receiver<serde_json::Value>,
}

/// The environment a binary runs with: the test's secret, nothing inherited that would change it.
pub fn binary(path: &str, secret: &[u8]) -> std::process::Command {
    let mut command = std::process::Command::new(path);
    for (key, _) in std::env::vars() {
        if key.starts_with("IXN_") || key.starts_with("OTEL_") {
            command.env_remove(key);
        }
    }
    command
        .env(
            "IXN_JWT_SECRET",
            std::str::from_utf8(secret).expect("a text secret"),
        )
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    command
}

impl Process {
    /// Spawns `command` (JSON logs on stderr) and waits for the log line `serving`.
    pub fn spawn(mut command: std::process::Command, serving: &str, metrics: bool) -> Process {
        let mut child = command.spawn().expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "fields": { "message": line } }));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        let (mut addr, mut metrics_addr) = (None, None);
        while addr.is_none() || (metrics && metrics_addr.is_none()) {
            let line = logs
                .recv_timeout(PATIENCE)
                .expect("the process announces its addresses");
            let fields = &line["fields"];
            if fields["message"] == serving {
                addr = Some(fields["listen"].as_str().unwrap().parse().unwrap());
            } else if fields["message"] == "metrics serving" {
                metrics_addr = Some(fields["metrics_listen"].as_str().unwrap().parse().unwrap());
            }
        }
        Process {
            child: Some(child),
            addr: addr.unwrap(),
            metrics: metrics_addr,
            logs,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// Waits for the process to exit.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let pid = child.id();
        let waited = tokio::task::spawn_blocking(move || child.wait());
        match tokio::time::timeout(PATIENCE, waited).await {
            Ok(status) => status.unwrap().unwrap(),
            Err(_) => {
                let _ = std::process::Command::new("kill")
                    .args(["-s", "KILL", &pid.to_string()])
                    .status();
                panic!("the process did not exit within {PATIENCE:?}");
            }
        }
    }

    /// The metrics endpoint's text.
    pub async fn scrape(&self) -> String {
        scrape(self.metrics.expect("a metrics endpoint")).await
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `GET /metrics` over a plain HTTP/1.0 connection.
pub async fn scrape(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: metrics\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// The value of the sample `name{labels}` (labels as the text spells them, e.g. `state="queued"`;
/// empty for none) in a scrape, if present.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut have: Vec<&str> = if rest.is_empty() {
                Vec::new()
            } else {
                rest.split(',').collect()
            };
            have.sort_unstable();
            let mut want = labels.to_vec();
            want.sort_unstable();
            (metric == name && have == want).then(|| value.parse().ok())?
        })
}

/// The variable naming the PostgreSQL the tests of the shared store run against.
pub const TEST_DATABASE_URL: &str = "IXN_TEST_DATABASE_URL";

/// Whether the test binary `crate_name` runs its suite on PostgreSQL: the `*_on_postgres` ones,
/// each a suite of its directory again.
pub fn on_postgres(crate_name: &str) -> bool {
    crate_name.ends_with("on_postgres")
}

/// The store of a server on `data_dir` in the test binary `crate_name`: on PostgreSQL, a schema
/// named after the directory, so that a restart finds what the server wrote (and replicas given one
/// directory share it); `None` for SQLite in the directory.
pub async fn database_url(crate_name: &str, data_dir: &std::path::Path) -> Option<String> {
    if on_postgres(crate_name) {
        Some(postgres_schema(data_dir).await)
    } else {
        None
    }
}

/// How long a test's schema is kept before a later run drops it.
const SCHEMA_KEPT_SECS: i64 = 6 * 3_600;

/// A URL to a schema of its own on the test PostgreSQL ([`TEST_DATABASE_URL`]), named after `key`
/// (a test's data directory), so that a restarted server finds what it wrote and tests running at
/// once stay apart. Schemas that earlier runs left behind are dropped once they are old.
pub async fn postgres_schema(key: &std::path::Path) -> String {
    use sha2::Digest;
    let base = std::env::var(TEST_DATABASE_URL).unwrap_or_else(|_| {
        panic!(
            "{TEST_DATABASE_URL} must name the test PostgreSQL (this test binary was built with it)"
        )
    });
    let digest = sha2::Sha256::digest(key.to_string_lossy().as_bytes());
    let schema: String = format!(
        "t_{}",
        digest[..10]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let config: tokio_postgres::Config = base.parse().expect("the test database URL");
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("the test PostgreSQL ({TEST_DATABASE_URL}) is reachable: {e}"));
    tokio::spawn(connection);
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let mut sweep = false;
    SWEPT.call_once(|| sweep = true);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time after 1970")
        .as_secs() as i64;
    if sweep {
        let stale = client
            .query(
                "SELECT nspname::text FROM pg_namespace
                 WHERE nspname LIKE 't\\_%' AND obj_description(oid, 'pg_namespace') ~ '^ixn-test [0-9]+$'
                   AND split_part(obj_description(oid, 'pg_namespace'), ' ', 2)::bigint < $1",
                &[&(now - SCHEMA_KEPT_SECS)],
            )
            .await
            .expect("old test schemas are listed");
        for row in stale {
            let name: String = row.get(0);
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
                .await;
        }
    }
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; COMMENT ON SCHEMA \"{schema}\" IS 'ixn-test {now}'"
        ))
        .await
        .expect("the test schema is created");
    crate::pg::in_schema(&base, &schema)
}

/// A certificate authority made for a test, and the certificates it signs.
pub struct Pki {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its private key, in PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl Issued {
    pub fn identity(&self) -> tonic::transport::Identity {
        tonic::transport::Identity::from_pem(&self.cert, &self.key)
    }
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        Pki {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// The CA's certificate, in PEM.
    pub fn ca(&self) -> String {
        self.issuer.pem()
    }

    pub fn ca_certificate(&self) -> tonic::transport::Certificate {
        tonic::transport::Certificate::from_pem(self.ca())
    }

    /// A server's certificate for `host`.
    pub fn server(&self, host: &str) -> Issued {
        self.issue(host, rcgen::ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client's certificate, named `name`.
    pub fn client(&self, name: &str) -> Issued {
        self.issue(name, rcgen::ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, name: &str, usage: rcgen::ExtendedKeyUsagePurpose) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// What a server serves with: `server`'s identity and, for mutual TLS, this CA for its
    /// clients' certificates.
    pub fn server_tls(&self, server: &Issued, mutual: bool) -> tonic::transport::ServerTlsConfig {
        let tls = tonic::transport::ServerTlsConfig::new().identity(server.identity());
        if mutual {
            tls.client_ca_root(self.ca_certificate())
        } else {
            tls
        }
    }

    /// What a client trusting this CA connects with, presenting `client` if given; servers are
    /// reached by address and named `localhost`.
    pub fn client_tls(&self, client: Option<&Issued>) -> tonic::transport::ClientTlsConfig {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(self.ca_certificate())
            .domain_name("localhost");
        match client {
            Some(client) => tls.identity(client.identity()),
            None => tls,
        }
    }
}

/// What a [`Link`] does with the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkMode {
    /// Forwards everything at once.
    Pass,
    /// Holds every byte (the connections stay open) until the mode changes.
    Stall,
    /// Forwards each chunk after a delay.
    Slow(Duration),
    /// Closes every connection and refuses new ones.
    Cut,
}

/// A TCP proxy between two services, for network faults: put it between a client and its server,
/// then cut, stall or slow the connections mid-stream, and restore them.
pub struct Link {
    pub addr: std::net::SocketAddr,
    mode: std::sync::Arc<tokio::sync::watch::Sender<LinkMode>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Starts forwarding connections made to [`Link::addr`] to `target`.
    pub async fn start(target: std::net::SocketAddr) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = std::sync::Arc::new(tokio::sync::watch::Sender::new(LinkMode::Pass));
        let accepting = tokio::spawn({
            let mode = mode.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if *mode.borrow() == LinkMode::Cut {
                        continue;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(client_read, server_write, mode.subscribe()));
                    tokio::spawn(pump(server_read, client_write, mode.subscribe()));
                }
            }
        });
        Link {
            addr,
            mode,
            accepting,
        }
    }

    pub fn set(&self, mode: LinkMode) {
        self.mode.send_replace(mode);
    }

    pub fn cut(&self) {
        self.set(LinkMode::Cut);
    }

    pub fn stall(&self) {
        self.set(LinkMode::Stall);
    }

    pub fn restore(&self) {
        self.set(LinkMode::Pass);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accepting.abort();
        self.mode.send_replace(LinkMode::Cut);
    }
}

/// Carries one direction of a connection as the link's mode says; a cut drops both halves.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: tokio::sync::watch::Receiver<LinkMode>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            cut = mode.wait_for(|m| *m == LinkMode::Cut) => { let _ = cut; return }
        };
        let current = match mode.wait_for(|m| *m != LinkMode::Stall).await {
            Ok(current) => *current,
            Err(_) => return,
        };
        match current {
            LinkMode::Cut => return,
            LinkMode::Slow(delay) => tokio::time::sleep(delay).await,
            LinkMode::Pass | LinkMode::Stall => {}
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
