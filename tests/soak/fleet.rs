//! The fleet's processes: how they start, stop and are signalled, and what they hold.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cellport_e2e::{proc_kib, spawn_service};
use cellport_testkit::{TEST_JWT_SECRET, wait_until};
use tokio::process::Child;

use super::Settings;

pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub async fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    wait_until(timeout, || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await
}

pub fn rss_mb(pid: Option<u32>) -> String {
    match pid.and_then(|p| proc_kib(p, "VmRSS")) {
        Some(kib) => format!("{:.1}", kib as f64 / 1024.0),
        None => "?".to_owned(),
    }
}

/// The RSS (MB) of the workers, the gateways and the api, as printed.
pub fn fleet_rss(fleet: &Fleet) -> (Vec<String>, Vec<String>, String) {
    let of = |pids: Vec<Option<u32>>| pids.into_iter().map(rss_mb).collect::<Vec<_>>();
    (
        of(fleet.worker_pids()),
        of(fleet.gateway_pids()),
        rss_mb(fleet.api.id()),
    )
}

/// One service process, logging to `<data>/logs/<name>.log`.
pub fn service(
    program: &Path,
    name: &str,
    data: &Path,
    env: &[(&str, String)],
) -> anyhow::Result<Child> {
    let env: Vec<(&str, String)> = env
        .iter()
        .cloned()
        .chain([
            ("CELLPORT_DATA_DIR", data.display().to_string()),
            ("CELLPORT_JWT_SECRET", TEST_JWT_SECRET.to_owned()),
        ])
        .collect();
    spawn_service(
        program,
        &data.join("logs").join(format!("{name}.log")),
        &env,
    )
    .with_context(|| format!("starting {name}"))
}

pub fn signal(child: &Child, sig: &str) -> anyhow::Result<()> {
    let pid = child.id().context("the process has exited")?;
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}

/// Sends SIGTERM and waits up to `grace` for the exit, then kills.
pub async fn terminate(child: &mut Child, grace: Duration) -> anyhow::Result<bool> {
    if child.id().is_none() {
        return Ok(true);
    }
    signal(child, "TERM")?;
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => {
            status?;
            Ok(true)
        }
        Err(_) => {
            child.kill().await?;
            Ok(false)
        }
    }
}

pub struct WorkerProc {
    pub name: String,
    pub child: Child,
}

/// Gateway `index` on `addr`.
fn gateway(
    settings: &Settings,
    data: &Path,
    redis_url: &str,
    addr: SocketAddr,
    index: usize,
) -> anyhow::Result<Child> {
    service(
        &settings.binaries.gateway,
        &format!("gateway-{index}"),
        data,
        &[
            ("CELLPORT_REDIS_URL", redis_url.to_owned()),
            ("CELLPORT_GATEWAY_ADDR", addr.to_string()),
        ],
    )
}

/// The fleet's processes and how to start them again.
pub struct Fleet {
    pub data: PathBuf,
    pub redis_url: String,
    pub api_addr: SocketAddr,
    pub gateway_addrs: [SocketAddr; 2],
    pub api: Child,
    pub gateways: [Child; 2],
    pub workers: Vec<WorkerProc>,
    next_worker: usize,
    settings: Settings,
}

impl Fleet {
    /// Starts the api, both gateways and the workers on `redis_url` and `data`.
    pub fn start(settings: &Settings, redis_url: String, data: &Path) -> anyhow::Result<Fleet> {
        let api_addr = free_addr()?;
        let gateway_addrs = [free_addr()?, free_addr()?];
        let api = service(
            &settings.binaries.api,
            "api",
            data,
            &[
                ("CELLPORT_REDIS_URL", redis_url.clone()),
                ("CELLPORT_API_ADDR", api_addr.to_string()),
                (
                    "CELLPORT_EVENTS_URL",
                    format!("ws://{}/ws", gateway_addrs[0]),
                ),
                (
                    "CELLPORT_MAX_ACTIVE_EXPORTS_PER_USER",
                    super::MAX_ACTIVE.to_string(),
                ),
            ],
        )?;
        let gateways = [
            gateway(settings, data, &redis_url, gateway_addrs[0], 0)?,
            gateway(settings, data, &redis_url, gateway_addrs[1], 1)?,
        ];
        let mut fleet = Fleet {
            data: data.to_owned(),
            redis_url,
            api_addr,
            gateway_addrs,
            api,
            gateways,
            workers: Vec::new(),
            next_worker: 0,
            settings: settings.clone(),
        };
        for _ in 0..super::WORKERS {
            let worker = fleet.spawn_worker()?;
            fleet.workers.push(worker);
        }
        Ok(fleet)
    }

    /// Stops everything: workers (woken first) and gateways by SIGTERM, then the api.
    pub async fn stop(&mut self) {
        for worker in &mut self.workers {
            let _ = signal(&worker.child, "CONT");
            let _ = terminate(&mut worker.child, Duration::from_secs(15)).await;
        }
        for gateway in &mut self.gateways {
            let _ = terminate(gateway, Duration::from_secs(15)).await;
        }
        let _ = terminate(&mut self.api, Duration::from_secs(15)).await;
    }

    pub fn spawn_worker(&mut self) -> anyhow::Result<WorkerProc> {
        self.next_worker += 1;
        let name = format!("soak-worker-{}", self.next_worker);
        let child = service(
            &self.settings.binaries.worker,
            &name,
            &self.data,
            &[
                ("CELLPORT_REDIS_URL", self.redis_url.clone()),
                ("CELLPORT_WORKER_NAME", name.clone()),
                (
                    "CELLPORT_WORKER_CONCURRENCY",
                    self.settings.jobs_per_worker.to_string(),
                ),
                (
                    "CELLPORT_ITEM_PARALLELISM",
                    self.settings.items_per_job.to_string(),
                ),
                ("CELLPORT_LEASE_TTL", "2s".into()),
                ("CELLPORT_RECLAIM_AFTER", "3s".into()),
                ("CELLPORT_REQUEUE_AFTER", "10s".into()),
            ],
        )?;
        Ok(WorkerProc { name, child })
    }

    pub fn spawn_gateway(&self, index: usize) -> anyhow::Result<Child> {
        gateway(
            &self.settings,
            &self.data,
            &self.redis_url,
            self.gateway_addrs[index],
            index,
        )
    }

    pub fn worker_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.data.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    pub fn worker_pids(&self) -> Vec<Option<u32>> {
        self.workers.iter().map(|w| w.child.id()).collect()
    }

    pub fn gateway_pids(&self) -> Vec<Option<u32>> {
        self.gateways.iter().map(Child::id).collect()
    }
}

/// The jobs a worker's log shows it running: started, with no line saying the run ended.
pub fn held_jobs(log: &str) -> HashSet<String> {
    const ENDED: [&str; 8] = [
        "export completed",
        "export stopped",
        "export failed",
        "job handed back",
        "lease lost",
        "job already finished",
        "not processed",
        "job ended elsewhere",
    ];
    let mut held = HashSet::new();
    for line in log.lines() {
        let Some(at) = line.find("job_id=") else {
            continue;
        };
        let Some(job) = line.get(at + 7..at + 7 + 36) else {
            continue;
        };
        if line.contains("export started") {
            held.insert(job.to_owned());
        } else if ENDED.iter().any(|e| line.contains(e)) {
            held.remove(job);
        }
    }
    held
}
