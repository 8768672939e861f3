//! What the examples (`demo`, `bench`, `crash_test`) share: request ids, reasons, and the bearer
//! token each call carries. Each example uses its part of it.

#![allow(dead_code)]

use ixn_proto::common::Reason;
use tonic::{Request, Status};

/// A fresh `request_id`.
pub fn rid() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A reason by its code.
pub fn reason(code: &str) -> Option<Reason> {
    Some(Reason {
        code: code.into(),
        ..Default::default()
    })
}

/// Puts a token on every call of a client.
#[derive(Clone)]
pub struct Bearer(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut r: Request<()>) -> Result<Request<()>, Status> {
        r.metadata_mut().insert("authorization", self.0.clone());
        Ok(r)
    }
}

/// A client whose calls carry a [`Bearer`] token.
pub type Authed =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>;

/// A port nobody listens on now.
pub fn free_port() -> Result<std::net::SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))
}

/// A connection to PostgreSQL at `url`.
pub async fn postgres(url: &str) -> Result<tokio_postgres::Client, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("PostgreSQL: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// One of the two services.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Service {
    Interactions,
    Sessions,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Interactions => "interaction-server",
            Service::Sessions => "session-service",
        }
    }
}

/// Both services' binaries as child processes, on one data directory (`platform.toml` in it is
/// interaction-server's configuration), sharing one signing secret. Each writes its log to
/// `<name>.log` in the directory, appended across restarts. Dropped, they are asked to drain.
pub struct Services {
    pub bin_dir: std::path::PathBuf,
    pub dir: std::path::PathBuf,
    pub secret: String,
    pub ixn_addr: std::net::SocketAddr,
    pub session_addr: std::net::SocketAddr,
    /// What the services log (`RUST_LOG`) unless the environment says otherwise.
    pub log_filter: &'static str,
    /// On PostgreSQL: each service's URL, selecting a schema of its own.
    pub database: Option<(String, String)>,
    ixn: Option<std::process::Child>,
    sessions: Option<std::process::Child>,
}

impl Services {
    /// The services of the binaries in `bin_dir` on `dir`, on free ports with a fresh secret; not
    /// started yet.
    pub fn new(bin_dir: std::path::PathBuf, dir: &std::path::Path) -> Result<Services, String> {
        Ok(Services {
            bin_dir,
            dir: dir.to_owned(),
            secret: format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
            ixn_addr: free_port()?,
            session_addr: free_port()?,
            log_filter: "info",
            database: None,
            ixn: None,
            sessions: None,
        })
    }

    pub fn addr(&self, service: Service) -> std::net::SocketAddr {
        match service {
            Service::Interactions => self.ixn_addr,
            Service::Sessions => self.session_addr,
        }
    }

    fn slot(&mut self, service: Service) -> &mut Option<std::process::Child> {
        match service {
            Service::Interactions => &mut self.ixn,
            Service::Sessions => &mut self.sessions,
        }
    }

    /// Starts `service` on its data directory (kept across restarts) and waits until it serves.
    pub async fn start(&mut self, service: Service) -> Result<(), String> {
        use std::process::Stdio;
        let name = service.name();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .map_err(|e| format!("{name}.log: {e}"))?;
        let mut cmd = std::process::Command::new(self.bin_dir.join(name));
        cmd.args(["--listen", &self.addr(service).to_string(), "--data-dir"])
            .arg(self.dir.join(name))
            .env("IXN_JWT_SECRET", &self.secret)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| self.log_filter.into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        match service {
            Service::Interactions => cmd.arg("--config").arg(self.dir.join("platform.toml")),
            Service::Sessions => {
                cmd.args(["--interaction-server", &format!("http://{}", self.ixn_addr)])
            }
        };
        if let Some((ixn, sessions)) = &self.database {
            let url = match service {
                Service::Interactions => ixn,
                Service::Sessions => sessions,
            };
            cmd.env("IXN_DATABASE_URL", url);
        }
        let child = cmd.spawn().map_err(|e| format!("{name}: {e}"))?;
        *self.slot(service) = Some(child);
        self.healthy(service).await
    }

    /// Waits until the health check answers SERVING.
    async fn healthy(&mut self, service: Service) -> Result<(), String> {
        use tonic_health::pb::health_client::HealthClient;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let addr = self.addr(service);
        loop {
            if let Some(Ok(Some(status))) = self.slot(service).as_mut().map(|c| c.try_wait()) {
                return Err(format!("{} exited at start: {status}", service.name()));
            }
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| e.to_string())?
                .connect_lazy();
            let answer = HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await;
            if answer.is_ok_and(|r| r.into_inner().status == 1) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("{} did not become healthy", service.name()));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: the process gets no chance to drain, flush or close anything.
    pub fn kill(&mut self, service: Service) {
        if let Some(mut child) = self.slot(service).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as Kubernetes stops a pod: the service drains and exits.
    pub fn stop(&mut self, service: Service) {
        if let Some(mut child) = self.slot(service).take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop(Service::Sessions);
        self.stop(Service::Interactions);
    }
}
