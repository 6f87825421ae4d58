//! The end of a soak: every job accounted for and ended, what the clients saw, the archives
//! read back, and the storage after a leftover sweep.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use cellport_store::Store;
use cellport_testkit::wait_until;
use futures::StreamExt;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::DRAIN_TIMEOUT;
use super::fleet::{Fleet, fleet_rss};
use super::users::{OptionsKind, Shared, status};

/// A job as the checks see it: id, user, project, options, and whether its user cancelled it.
pub type Submitted = (String, usize, usize, OptionsKind, bool);

/// The state once submissions stopped and every job ended (or the wait gave up).
pub struct Settled {
    pub all: Vec<Submitted>,
    /// Each ended job's last status.
    pub finals: HashMap<String, Value>,
    pub drained_in: Duration,
    pub last_end: Instant,
    /// Jobs in the projects' histories that no POST answered.
    pub unknown: Vec<String>,
    /// Whether every user saw each of its jobs end.
    pub delivered: bool,
    pub rss_end: (Vec<String>, Vec<String>, String),
}

/// What the checks found.
pub struct Verdict {
    pub failures: Vec<String>,
    pub by_status: BTreeMap<String, u64>,
    pub attempts: BTreeMap<u64, u64>,
    pub max_attempts: u64,
    pub violations: usize,
    pub completed: usize,
    pub archives_ok: usize,
    pub archive_bytes: u64,
    pub removed: usize,
}

/// Waits for every job to end and for each user to see its jobs end, then stops the clients.
pub async fn settle(
    shared: &Shared,
    fleet: &Fleet,
    clients: Vec<JoinHandle<()>>,
) -> anyhow::Result<Settled> {
    let api = &shared.api;
    let http = &shared.http;
    // Every job the api knows, from the projects' histories: a POST whose answer was lost
    // would show here.
    let mut unknown = Vec::new();
    for (user, project) in shared
        .projects
        .iter()
        .enumerate()
        .flat_map(|(u, ps)| ps.iter().map(move |p| (u, p)))
    {
        let mut before: Option<String> = None;
        loop {
            let mut url = format!("{api}/api/projects/{}/export/history?limit=100", project.id);
            if let Some(cursor) = &before {
                url.push_str(&format!("&before={cursor}"));
            }
            let page: Value = http
                .get(url)
                .bearer_auth(&shared.tokens[user])
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            for item in page["items"].as_array().context("history items")? {
                let id = item["id"].as_str().context("id")?;
                if !shared.jobs.lock().unwrap().contains_key(id) {
                    unknown.push(id.to_owned());
                }
            }
            match page["nextCursor"].as_str() {
                Some(cursor) => before = Some(cursor.to_owned()),
                None => break,
            }
        }
    }
    // Wait (bounded) for every job to end.
    let all: Vec<(String, usize, usize, OptionsKind, bool)> = shared
        .jobs
        .lock()
        .unwrap()
        .iter()
        .map(|(id, j)| (id.clone(), j.user, j.project, j.kind, j.cancel_requested))
        .collect();
    let drain_from = Instant::now();
    let mut finals: HashMap<String, Value> = HashMap::new();
    loop {
        for (job, user, project, ..) in &all {
            if finals.contains_key(job) {
                continue;
            }
            if let Ok(s) = status(shared, *user, &shared.projects[*user][*project].id, job).await
                && !matches!(s["status"].as_str(), Some("pending" | "processing"))
            {
                finals.insert(job.clone(), s);
            }
        }
        if finals.len() == all.len() || drain_from.elapsed() > DRAIN_TIMEOUT {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let drained_in = drain_from.elapsed();
    let last_end = Instant::now();
    println!(
        "soak: {} of {} jobs ended {:.1} s after submissions stopped",
        finals.len(),
        all.len(),
        drained_in.as_secs_f64()
    );

    // Each client resumes every job it knows and should then have seen each of its own jobs end.
    let resync_from = Instant::now();
    let delivered = wait_until(Duration::from_secs(20), || async {
        // Now and then again, in case a client was between two waits.
        if resync_from.elapsed().as_millis() % 3000 < 100 {
            shared.resync.notify_waiters();
        }
        all.iter().all(|(job, user, ..)| {
            shared.views[*user]
                .lock()
                .unwrap()
                .jobs
                .get(job)
                .is_some_and(|s| !s.terminals.is_empty())
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_end = fleet_rss(fleet);
    shared.stop_clients.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }

    Ok(Settled {
        all,
        finals,
        drained_in,
        last_end,
        unknown,
        delivered,
        rss_end,
    })
}

/// Checks the jobs' ends, the clients' views, the archives and the storage.
pub async fn verify(
    shared: &Shared,
    fleet: &Fleet,
    settled: &Settled,
    mut failures: Vec<String>,
) -> anyhow::Result<Verdict> {
    let Settled { all, finals, .. } = settled;
    if !settled.unknown.is_empty() {
        failures.push(format!(
            "{} job(s) in the histories that no POST answered: {:?}",
            settled.unknown.len(),
            settled.unknown
        ));
    }
    // Check: every job ended once, completed or cancelled by its user.
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut max_attempts = 0;
    let mut attempts_hist: BTreeMap<u64, u64> = BTreeMap::new();
    for (job, user, _, _, cancel_requested) in all {
        let Some(s) = finals.get(job) else {
            failures.push(format!("job {job} did not end within {DRAIN_TIMEOUT:?}"));
            *by_status.entry("stuck".into()).or_default() += 1;
            continue;
        };
        let state = s["status"].as_str().unwrap_or_default().to_owned();
        *by_status.entry(state.clone()).or_default() += 1;
        let attempts = s["attempts"].as_u64().unwrap_or(0);
        max_attempts = max_attempts.max(attempts);
        *attempts_hist.entry(attempts).or_default() += 1;
        match state.as_str() {
            "completed" => {}
            "cancelled" if *cancel_requested => {}
            other => failures.push(format!(
                "job {job} ended {other} (cancel requested: {cancel_requested}): {}",
                s["errorMessage"]
            )),
        }
        let view = shared.views[*user].lock().unwrap();
        match view.jobs.get(job).map(|s| s.terminals.as_slice()) {
            Some([(event, data)]) => {
                let expected = format!("export:{state}");
                if *event != expected {
                    failures.push(format!(
                        "job {job}: its user saw {event}, the job is {state}"
                    ));
                }
                if event == "export:cancelled" && data["reason"] != "user_cancelled" {
                    failures.push(format!(
                        "job {job}: cancelled with reason {}",
                        data["reason"]
                    ));
                }
            }
            Some([]) | None => failures.push(format!("job {job}: its user never saw it end")),
            Some(more) => failures.push(format!(
                "job {job}: its user saw {} terminal events",
                more.len()
            )),
        }
    }
    if !settled.delivered {
        println!("soak: some users did not see every one of their jobs end");
    }
    let mut violations = Vec::new();
    for view in &shared.views {
        violations.extend(view.lock().unwrap().violations.iter().cloned());
    }
    if !violations.is_empty() {
        failures.push(format!(
            "{} seq/terminal violations at clients, first: {:?}",
            violations.len(),
            violations.iter().take(5).collect::<Vec<_>>()
        ));
    }

    // Check: every completed archive downloads and reads whole, with the expected entries.
    let completed: Vec<_> = all
        .iter()
        .filter(|(job, ..)| finals.get(job).is_some_and(|s| s["status"] == "completed"))
        .collect();
    let checked = futures::stream::iter(completed.iter().map(|(job, user, project, kind, _)| {
        let shared = &shared;
        let finals = &finals;
        async move {
            let info = (*user, *project, *kind);
            check_archive(shared, job, info, &finals[job]).await
        }
    }))
    .buffer_unordered(4)
    .collect::<Vec<_>>()
    .await;
    let mut archive_bytes = 0u64;
    let mut archives_ok = 0;
    for result in checked {
        match result {
            Ok(size) => {
                archives_ok += 1;
                archive_bytes += size;
            }
            Err(e) => failures.push(format!("archive: {e:#}")),
        }
    }

    // Check: after a leftover sweep (as of two hours later), nothing of an ended job is staged,
    // and only the completed jobs' archives are stored.
    let storage = cellport_io::Storage::new(&fleet.data);
    let store = Store::connect(&fleet.redis_url).await?;
    let removed = cellport_worker::retention::remove_leftovers_as_of(
        &store,
        &storage,
        std::time::SystemTime::now() + Duration::from_secs(2 * 3600),
    )
    .await?;
    let ended: HashSet<&String> = finals.keys().collect();
    let staged: Vec<String> = std::fs::read_dir(fleet.data.join("staging"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| ended.iter().any(|job| name.starts_with(job.as_str())))
        .collect();
    if !staged.is_empty() {
        failures.push(format!(
            "staging/ still holds {} ended job(s): {:?}",
            staged.len(),
            staged.iter().take(5).collect::<Vec<_>>()
        ));
    }
    let completed_ids: HashSet<&str> = completed.iter().map(|(job, ..)| job.as_str()).collect();
    let mut archived: HashMap<String, u64> = HashMap::new();
    let mut strays = Vec::new();
    for entry in std::fs::read_dir(fleet.data.join("archives"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let job = name.get(..36).unwrap_or_default();
        if completed_ids.contains(job) && name.ends_with(".zip") {
            *archived.entry(job.to_owned()).or_default() += 1;
        } else {
            strays.push(name);
        }
    }
    if !strays.is_empty() || archived.values().any(|n| *n != 1) {
        failures.push(format!(
            "archives/ after the sweep: {} stray file(s) {:?}, {} job(s) with more than one archive",
            strays.len(),
            strays.iter().take(5).collect::<Vec<_>>(),
            archived.values().filter(|n| **n != 1).count()
        ));
    }

    Ok(Verdict {
        failures,
        by_status,
        attempts: attempts_hist,
        max_attempts,
        violations: violations.len(),
        completed: completed.len(),
        archives_ok,
        archive_bytes,
        removed,
    })
}

/// Every entry of a ZIP held in memory, by name, each read to its end with its CRC checked.
async fn read_zip(bytes: Vec<u8>) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    // async_zip 0.0.19 marks its readers deprecated in favour of a module it does not ship yet.
    #[allow(deprecated)]
    let zip = async_zip::base::read::mem::ZipFileReader::new(bytes).await?;
    let mut entries = BTreeMap::new();
    for index in 0..zip.file().entries().len() {
        let name = zip.file().entries()[index].filename().as_str()?.to_owned();
        let mut reader = zip.reader_with_entry(index).await?;
        let mut content = Vec::new();
        reader.read_to_end_checked(&mut content).await?;
        anyhow::ensure!(!entries.contains_key(&name), "duplicate entry {name}");
        entries.insert(name, content);
    }
    Ok(entries)
}

pub async fn check_archive(
    shared: &Shared,
    job: &str,
    info: (usize, usize, OptionsKind),
    status: &Value,
) -> anyhow::Result<u64> {
    let (user, project, kind) = info;
    let url = status["downloadUrl"].as_str().context("no downloadUrl")?;
    let response = shared
        .http
        .get(format!("{}{url}", shared.api))
        .bearer_auth(&shared.tokens[user])
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == 200,
        "download answered {}",
        response.status()
    );
    let bytes = response.bytes().await?.to_vec();
    let size = bytes.len() as u64;
    let entries = read_zip(bytes)
        .await
        .with_context(|| format!("job {job}: reading the archive"))?;
    let project = &shared.projects[user][project];
    let expected = kind.entries(&project.files);
    let names: BTreeSet<String> = entries.keys().cloned().collect();
    anyhow::ensure!(
        names == expected,
        "job {job}: entries differ: missing {:?}, unexpected {:?}",
        expected.difference(&names).collect::<Vec<_>>(),
        names.difference(&expected).collect::<Vec<_>>()
    );
    if !matches!(kind, OptionsKind::AnnotationsOnly) {
        for file in &project.files {
            let original = std::fs::read(project.source_dir.join(file))?;
            anyhow::ensure!(
                entries[&format!("images/{file}")] == original,
                "job {job}: images/{file} differs from its source"
            );
        }
    }
    Ok(size)
}
