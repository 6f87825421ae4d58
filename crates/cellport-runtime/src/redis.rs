//! A private `redis-server` child process: the embedded default of `cellportctl demo`/`serve`
//! when no Redis answers, and every test's own Redis.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// Options for [`RedisServer::start`].
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Turn on the append-only file (`appendfsync everysec`), as production runs it.
    pub aof: bool,
    /// Where Redis keeps its files; a fresh temp dir when `None`.
    pub dir: Option<PathBuf>,
    /// The port; a free one when `None`.
    pub port: Option<u16>,
    /// Also listen with TLS on a second free port, with a certificate for 127.0.0.1 made in
    /// the data dir by `openssl`; [`RedisServer::url`] is then the `rediss://` one.
    pub tls: bool,
}

enum DataDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::Kept(p) => p,
        }
    }
}

/// A private redis-server, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    tls_port: Option<u16>,
    dir: DataDir,
    options: RedisOptions,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The redis-server binary: `CELLPORT_REDIS_SERVER`, else `redis-server` on the PATH.
pub fn redis_server_binary() -> PathBuf {
    std::env::var_os("CELLPORT_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

impl RedisServer {
    pub async fn start(options: RedisOptions) -> anyhow::Result<RedisServer> {
        // A free port can be taken between probing and binding: try a few.
        let attempts = if options.port.is_some() { 1 } else { 5 };
        let mut last_error = None;
        for _ in 0..attempts {
            let dir = match &options.dir {
                Some(d) => {
                    std::fs::create_dir_all(d)
                        .with_context(|| format!("creating {}", d.display()))?;
                    DataDir::Kept(d.clone())
                }
                None => DataDir::Temp(tempfile::tempdir()?),
            };
            let mut server = RedisServer {
                child: None,
                port: options.port.map_or_else(free_port, Ok)?,
                tls_port: if options.tls {
                    Some(free_port()?)
                } else {
                    None
                },
                dir,
                options: options.clone(),
            };
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("tried at least once"))
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.path().to_owned();
        let mut cmd = Command::new(redis_server_binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&dir)
            .args([
                "--save",
                "",
                "--daemonize",
                "no",
                "--maxmemory-policy",
                "noeviction",
            ])
            .arg("--logfile")
            .arg(dir.join("redis.log"));
        if let Some(tls_port) = self.tls_port {
            let (cert, key) = self.certificate()?;
            cmd.arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(&cert)
                .arg("--tls-key-file")
                .arg(&key)
                .arg("--tls-ca-cert-file")
                .arg(self.dir.path().join("tls/ca.pem"))
                .args(["--tls-auth-clients", "no"]);
        }
        if self.options.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "everysec"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (install it with: sudo apt-get install -y redis-server)",
                    redis_server_binary().display()
                )
            })?;
        self.child = Some(child);
        // A listener that is not this Redis never answers PING; a Redis still loading its AOF
        // says so, and is waited for as long as it keeps saying it.
        let mut deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::time::Instant::now() < deadline {
            match ping(self.port).await {
                Ping::Pong => return Ok(()),
                Ping::Loading => deadline = tokio::time::Instant::now() + Duration::from_secs(15),
                Ping::NoAnswer => {}
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("redis-server exited with {status}: {}", last_log_line(&dir));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "redis-server on port {} did not start: {}",
            self.port,
            last_log_line(&dir)
        )
    }

    /// `redis://127.0.0.1:PORT`, or `rediss://…` on the TLS port of a server started with `tls`.
    pub fn url(&self) -> String {
        match self.tls_port {
            Some(port) => format!("rediss://127.0.0.1:{port}"),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The CA a client of a `tls` server must trust (`SSL_CERT_FILE` names it to a client).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls_port.map(|_| self.dir.path().join("tls/ca.pem"))
    }

    /// A CA and the server's certificate for 127.0.0.1 and localhost signed by it, made once
    /// with `openssl`. Returns the certificate and key the server presents.
    fn certificate(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let dir = self.dir.path().join("tls");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        if cert.exists() && key.exists() {
            return Ok((cert, key));
        }
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\n",
        )?;
        let p256 = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let steps: [&[&str]; 3] = [
            &[
                &["req", "-x509"],
                &p256[..],
                &["-days", "2", "-subj", "/CN=Cellport test CA"],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                &["-keyout", "ca.key", "-out", "ca.pem"],
            ]
            .concat(),
            &[
                &["req"],
                &p256[..],
                &[
                    "-subj",
                    "/CN=127.0.0.1",
                    "-keyout",
                    "key.pem",
                    "-out",
                    "server.csr",
                ],
            ]
            .concat(),
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "cert.pem",
            ],
        ];
        for args in steps {
            let made = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running openssl to make a test certificate")?;
            anyhow::ensure!(made.success(), "openssl {} failed", args[..2].join(" "));
        }
        Ok((cert, key))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs the server: nothing is flushed beyond what AOF already wrote.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Kills and starts the server again on the same port and data directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.respawn().await
    }

    /// Starts the stopped server again. The port may still be held for a moment (a client's
    /// socket that happened to get it): a few tries.
    async fn respawn(&mut self) -> anyhow::Result<()> {
        let mut tries = 0;
        loop {
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(e) if tries >= 4 => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Stops the server as a deploy would (SIGTERM: it flushes its AOF) and waits for it to
    /// exit. Dropping it instead kills it, losing up to a second of AOF writes.
    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()?;
            }
            tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .context("redis-server did not stop within 10 s")??;
        }
        Ok(())
    }

    /// Stops the server as a deploy would (SIGTERM: it flushes its AOF) and starts it again.
    pub async fn graceful_restart(&mut self) -> anyhow::Result<()> {
        self.shutdown().await?;
        self.respawn().await
    }
}

enum Ping {
    /// A Redis that is up and has loaded its data.
    Pong,
    /// A Redis loading its data.
    Loading,
    /// Nothing listening, or not Redis.
    NoAnswer,
}

async fn ping(port: u16) -> Ping {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return Ping::NoAnswer;
    };
    // As long as "+PONG\r\n"; "-LOADING …" starts with the same number of bytes.
    let mut reply = [0u8; 7];
    let exchange = async {
        stream.write_all(b"PING\r\n").await?;
        stream.read_exact(&mut reply).await
    };
    match tokio::time::timeout(Duration::from_millis(500), exchange).await {
        Ok(Ok(_)) if &reply == b"+PONG\r\n" => Ping::Pong,
        Ok(Ok(_)) if &reply == b"-LOADIN" => Ping::Loading,
        _ => Ping::NoAnswer,
    }
}

fn last_log_line(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("redis.log"))
        .ok()
        .and_then(|log| log.lines().last().map(str::to_owned))
        .unwrap_or_default()
}
