//! A private PostgreSQL cluster as a child process: every test's own database server and the
//! embedded one of `cellportctl demo --postgres`, holding the web app's tables (SPEC §10).
//!
//! The cluster lives in a temp dir (in /dev/shm when it has room), listens on 127.0.0.1 on a
//! free port (never 5432) with its unix socket inside that dir, trusts local connections and
//! runs with `fsync=off`. initdb and postgres refuse to run as root, so under root both run as
//! `nobody`, who owns the dir.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// The web app's tables, as its Prisma migrations create them.
pub const WEBAPP_SCHEMA: &str = include_str!("postgres/webapp_schema.sql");

/// The superuser initdb creates; the URLs name it.
const SUPERUSER: &str = "cellport";

/// The OS user that runs initdb and postgres when this process is root.
const UNPRIVILEGED_USER: &str = "nobody";

/// initdb's flags. A cached template made with other flags is not reused: bump
/// [`TEMPLATE_LAYOUT`] with them.
const INITDB_ARGS: &[&str] = &[
    "--username",
    SUPERUSER,
    "--auth",
    "trust",
    "--encoding",
    "UTF8",
    "--locale",
    "C",
    "--no-sync",
    "--no-instructions",
    // 1 MB WAL segments instead of 16: a smaller data dir to copy.
    "--wal-segsize",
    "1",
];
const TEMPLATE_LAYOUT: &str = "v1";

/// Server settings: no fsync (a cluster survives its processes' crash, not the machine's), and
/// no background process that a test does not need (autovacuum, WAL senders, logical
/// replication). Commits stay synchronous: writing the WAL without syncing it costs little, and
/// a killed server keeps every committed row, as a real one does.
const SERVER_SETTINGS: &[&str] = &[
    "listen_addresses=127.0.0.1",
    "fsync=off",
    "full_page_writes=off",
    "wal_level=minimal",
    "max_wal_senders=0",
    "max_logical_replication_workers=0",
    "autovacuum=off",
    "max_connections=50",
    "logging_collector=off",
];

/// Options for [`PostgresServer::start`].
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// Where the cluster lives (its data dir is `data/` inside): a fresh temp dir when `None`.
    /// A dir that already holds a cluster is started as it is.
    pub dir: Option<PathBuf>,
    /// The port; a free one when `None`.
    pub port: Option<u16>,
}

enum ClusterDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl ClusterDir {
    fn path(&self) -> &Path {
        match self {
            ClusterDir::Temp(t) => t.path(),
            ClusterDir::Kept(p) => p,
        }
    }
}

/// The OS identity initdb and postgres run as; `None` runs them as this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServerUser {
    uid: u32,
    gid: u32,
}

/// A private PostgreSQL cluster, shut down (immediate mode) and deleted when dropped.
pub struct PostgresServer {
    child: Option<Child>,
    port: u16,
    dir: ClusterDir,
    bin_dir: PathBuf,
    user: Option<ServerUser>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

const INSTALL_HINT: &str = "install it with: sudo apt-get install -y postgresql, or set CELLPORT_PG_BIN to the directory holding initdb and postgres";

/// The directory holding `initdb` and `postgres`: `CELLPORT_PG_BIN`, else the one an `initdb` on
/// the PATH resolves to, else the newest `/usr/lib/postgresql/*/bin` (Debian keeps them off the PATH).
pub fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("CELLPORT_PG_BIN") {
        let dir = PathBuf::from(dir);
        if !has_both(&dir) {
            bail!(
                "CELLPORT_PG_BIN={} holds no initdb and postgres",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("initdb"))
        .filter(|initdb| initdb.is_file())
        // A symlink such as /usr/local/bin/initdb points into the version's bin dir, which
        // also holds the matching postgres.
        .filter_map(|initdb| initdb.canonicalize().ok()?.parent().map(Path::to_owned))
        .find(|dir| has_both(dir));
    if let Some(dir) = on_path {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, dir)) => Ok(dir),
        None => bail!("initdb not found ({INSTALL_HINT})"),
    }
}

/// `nobody` when this process is root (initdb and postgres refuse root), else `None`.
fn server_user() -> anyhow::Result<Option<ServerUser>> {
    if !rustix::process::geteuid().is_root() {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [name, _, uid, gid, ..] if *name == UNPRIVILEGED_USER => Some(ServerUser {
                    uid: uid.parse().ok()?,
                    gid: gid.parse().ok()?,
                }),
                _ => None,
            }
        })
        .map(Some)
        .with_context(|| {
            format!(
                "running as root, postgres needs the user {UNPRIVILEGED_USER}, which is missing"
            )
        })
}

/// Hands `path` to the server user, so initdb and postgres can write there.
fn give_to(user: Option<ServerUser>, path: &Path) -> anyhow::Result<()> {
    if let Some(user) = user {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .with_context(|| format!("handing {} to uid {}", path.display(), user.uid))?;
    }
    Ok(())
}

/// A command for one of the server's programs, run as the server user from `cwd` (a dir it can
/// read: postgres complains when it cannot read its working directory).
fn server_command(program: &Path, user: Option<ServerUser>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd).stdin(Stdio::null());
    if let Some(user) = user {
        // std drops the supplementary groups when a root process sets a uid.
        cmd.uid(user.uid).gid(user.gid);
    }
    cmd
}

/// Runs a program of the server's to its end; its output is the error when it fails.
async fn run_server_program(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let output = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("cannot run {what} ({INSTALL_HINT})"))?;
    if !output.status.success() {
        bail!(
            "{what} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Where temp clusters and the template go: `CELLPORT_PG_TMPDIR`, else /dev/shm when it has a
/// GiB free (a RAM disk: copying the template there takes a tenth of the time it takes on a
/// busy disk, and deleting a cluster no time at all), else the temp dir. Containers often give
/// /dev/shm 64 MB: too little, so the temp dir.
fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CELLPORT_PG_TMPDIR") {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    let roomy = rustix::fs::statvfs(shm)
        .is_ok_and(|fs| fs.f_bavail.saturating_mul(fs.f_frsize) >= 1 << 30)
        && rustix::fs::access(shm, rustix::fs::Access::WRITE_OK).is_ok();
    if roomy {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// Serializes template creation within this process; other processes race through rename.
static TEMPLATE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A data dir fresh from initdb, kept in [`scratch_root`] across runs and copied for each cluster:
/// initdb takes about a second, the copy a fraction of that. Keyed by the server's version, the
/// initdb flags and the owner, so an upgrade or another user never reuses a stale one.
async fn template_data_dir(
    bin_dir: &Path,
    user: Option<ServerUser>,
    temp_root: &Path,
) -> anyhow::Result<PathBuf> {
    let version_output = run_server_program(
        server_command(&bin_dir.join("postgres"), user, temp_root).arg("--version"),
        "postgres --version",
    )
    .await?;
    // "postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)" → "15.14"
    let version: String = version_output
        .split_whitespace()
        .nth(2)
        .unwrap_or("unknown")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.')
        .collect();
    let owner = user.map_or_else(|| rustix::process::geteuid().as_raw(), |u| u.uid);
    let name = format!("cellport-pg-template-{version}-{TEMPLATE_LAYOUT}-u{owner}");
    let template = temp_root.join(&name);
    let data = template.join("data");

    let _serialized = TEMPLATE_LOCK.lock().await;
    if data.join("PG_VERSION").is_file() {
        use std::os::unix::fs::MetadataExt;
        let found_owner = std::fs::metadata(&template)?.uid();
        if found_owner != owner {
            bail!(
                "{} belongs to uid {found_owner}, not {owner}: remove it",
                template.display()
            );
        }
        return Ok(data);
    }
    let building = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempdir_in(temp_root)?;
    give_to(user, building.path())?;
    let mut initdb = server_command(&bin_dir.join("initdb"), user, building.path());
    initdb
        .arg("--pgdata")
        .arg(building.path().join("data"))
        .args(INITDB_ARGS);
    run_server_program(&mut initdb, "initdb").await?;
    let building = building.keep();
    if std::fs::rename(&building, &template).is_err() {
        // Another process made it first: use theirs.
        std::fs::remove_dir_all(&building)?;
        if !data.join("PG_VERSION").is_file() {
            bail!("cannot create the template {}", template.display());
        }
    }
    Ok(data)
}

impl PostgresServer {
    /// Creates the cluster when its dir holds none, and starts it.
    pub async fn start(options: PostgresOptions) -> anyhow::Result<PostgresServer> {
        let bin_dir = postgres_bin_dir()?;
        let user = server_user()?;
        let scratch = scratch_root();
        let dir = match &options.dir {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                ClusterDir::Kept(d.canonicalize()?)
            }
            None => ClusterDir::Temp(
                tempfile::Builder::new()
                    .prefix("cellport-pg-")
                    .tempdir_in(&scratch)
                    .with_context(|| format!("creating a temp dir in {}", scratch.display()))?,
            ),
        };
        give_to(user, dir.path())?;
        let data = dir.path().join("data");
        if !data.join("PG_VERSION").is_file() {
            let template = template_data_dir(&bin_dir, user, &scratch).await?;
            let mut copy = server_command(Path::new("cp"), user, dir.path());
            copy.arg("-a").arg(&template).arg(&data);
            run_server_program(&mut copy, "copying the template cluster").await?;
        }
        let mut server = PostgresServer {
            child: None,
            port: 0,
            dir,
            bin_dir,
            user,
        };
        // A free port can be taken between probing and binding: try a few.
        let attempts = if options.port.is_some() { 1 } else { 5 };
        let mut last_error = None;
        for _ in 0..attempts {
            server.port = options.port.map_or_else(free_port, Ok)?;
            match server.spawn().await {
                Ok(()) => return Ok(server),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("tried at least once"))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = server_command(&self.bin_dir.join("postgres"), self.user, self.dir.path());
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-p")
            .arg(self.port.to_string())
            // The unix socket goes in the cluster's dir, not /var/run/postgresql.
            .arg("-k")
            .arg(self.dir.path());
        for setting in SERVER_SETTINGS {
            cmd.arg("-c").arg(setting);
        }
        let child = cmd
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start postgres ({INSTALL_HINT})"))?;
        self.child = Some(child);
        // Ready once it answers a query as this cluster: a listener that is another server
        // names another data dir, one still starting or recovering refuses connections.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if self.answers_as_this_cluster().await {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!("postgres exited with {status}: {}", self.last_log_line());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill().await?;
        bail!(
            "postgres on port {} did not start: {}",
            self.port,
            self.last_log_line()
        )
    }

    async fn answers_as_this_cluster(&self) -> bool {
        let mut config: tokio_postgres::Config = match self.url().parse() {
            Ok(config) => config,
            Err(_) => return false,
        };
        config.connect_timeout(Duration::from_millis(500));
        let Ok(Ok((client, connection))) = tokio::time::timeout(
            Duration::from_secs(1),
            config.connect(tokio_postgres::NoTls),
        )
        .await
        else {
            return false;
        };
        tokio::spawn(connection);
        let reported = client
            .query_one("SELECT current_setting('data_directory')", &[])
            .await
            .ok()
            .and_then(|row| row.try_get::<_, String>(0).ok());
        reported.is_some_and(|dir| Path::new(&dir) == self.data_dir())
    }

    /// `postgres://cellport@127.0.0.1:PORT/postgres`: the database initdb makes.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of database `name` on this cluster.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's dir: `data/`, the log `postgres.log` and the unix socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server process runs (it may not accept connections yet or any more).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Creates an empty database `name` (letters, digits and `_`) and returns its URL.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("invalid database name {name:?}: use letters, digits and _");
        }
        let client = connect(&self.url()).await?;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(self.database_url(name))
    }

    /// Creates database `name` holding the web app's empty tables ([`WEBAPP_SCHEMA`]) and
    /// returns its URL.
    pub async fn create_webapp_database(&self, name: &str) -> anyhow::Result<String> {
        let url = self.create_database(name).await?;
        let client = connect(&url).await?;
        client
            .batch_execute(WEBAPP_SCHEMA)
            .await
            .context("creating the web app's tables")?;
        Ok(url)
    }

    /// Stops the server as an operator would (fast shutdown: sessions are ended, a checkpoint
    /// is written) and waits until it has exited. Connections fail until [`Self::restart`].
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(rustix::process::Signal::INT, Duration::from_secs(30))
            .await
    }

    /// SIGKILLs the postmaster, as a crash would; the next start recovers from the WAL. Its
    /// backends notice the postmaster's death and exit on their own.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and data dir, stopping it first if it runs.
    /// A few tries: after [`Self::kill`] the old backends may hold the shared memory, and a
    /// client's socket may hold the port, for a moment.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        let mut tries = 0;
        loop {
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(e) if tries >= 9 => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn signal_and_wait(
        &mut self,
        signal: rustix::process::Signal,
        patience: Duration,
    ) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id().and_then(pid_of) {
            // It may have exited already: waiting below tells.
            let _ = rustix::process::kill_process(pid, signal);
        }
        match tokio::time::timeout(patience, child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                child.kill().await?;
                bail!("postgres did not stop within {patience:?}: killed it");
            }
        }
        Ok(())
    }

    fn last_log_line(&self) -> String {
        std::fs::read_to_string(self.log_path())
            .ok()
            .and_then(|log| log.lines().last().map(str::to_owned))
            .unwrap_or_default()
    }
}

impl Drop for PostgresServer {
    /// Shuts the server down and waits for it, so no backend outlives the dir it is about to
    /// lose (a SIGKILL alone would leave them to notice later): immediate shutdown (SIGQUIT) for
    /// a temp dir, fast shutdown (SIGINT, with a checkpoint) for a kept one.
    fn drop(&mut self) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let signal = match self.dir {
            ClusterDir::Temp(_) => rustix::process::Signal::QUIT,
            ClusterDir::Kept(_) => rustix::process::Signal::INT,
        };
        if let Some(pid) = child.id().and_then(pid_of) {
            let _ = rustix::process::kill_process(pid, signal);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // kill_on_drop SIGKILLs it if it is still there.
    }
}

fn pid_of(id: u32) -> Option<rustix::process::Pid> {
    rustix::process::Pid::from_raw(i32::try_from(id).ok()?)
}

/// A client on `url` whose connection runs on a spawned task.
async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(connection);
    Ok(client)
}
