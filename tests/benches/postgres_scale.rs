//! A web-app project of 100,000 images, read in pages from the web app's PostgreSQL (SPEC §10).
//! Everything runs on loopback of this machine: a private PostgreSQL and a private Redis with
//! AOF, the api in this process, and one worker as its own process (the `e2e-worker` binary).
//! Prints, each with how it was measured:
//!
//! * the fill time of the synthetic project (20 polygons of 16 points per image);
//! * `GET …/images?limit=20` walked to the last page, then the last and the first page asked
//!   again in turn: latency p50/p99/max and the ratio last / first;
//! * an annotations-and-metrics-only export: time to the first event, time to `completed`, items
//!   per second, the worker's peak RSS (VmRSS every 50 ms, VmHWM at the end), the archive's size;
//! * Redis bytes written per event (AOF growth over the events the commits published, with the
//!   commands that wrote them) and the size of one status answer;
//! * the same export of a job whose `selectedImageIds` names every image, and what its status
//!   answer would weigh with the ids inline. Both exports are compared over the same window
//!   after their first event (`CELLPORT_BENCH_WINDOW_SECONDS`, 60); the second is cancelled at
//!   its end unless `CELLPORT_BENCH_SELECTED_FULL=1` runs it to completion too.
//!
//! `cargo bench -p cellport-e2e --bench postgres_scale`; `CELLPORT_BENCH_IMAGES` (100000) and
//! `CELLPORT_BENCH_REPEATS` (300) shrink it for a quick look.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cellport_api::ApiConfig;
use cellport_core::UserId;
use cellport_e2e::{Rng, proc_kib};
use cellport_http::{JwtKeys, TokenRules};
use cellport_io::SourceConfig;
use cellport_store::Store;
use cellport_testkit::webapp::{self, NewImage, NewSegmentation};
use cellport_testkit::{
    PostgresOptions, PostgresServer, RedisOptions, RedisServer, jwt_secret, local_listener,
    wait_until,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const POLYGONS_PER_IMAGE: usize = 20;
const POINTS_PER_POLYGON: usize = 16;
/// Every tenth image also has a hole in its first cell.
const HOLE_EVERY: usize = 10;
const IMAGE_SIZE: i32 = 1024;
/// Images per `COPY` of segmentations: about 20 MB of polygon text each.
const FILL_CHUNK: usize = 2_000;
const PAGE_SIZE: usize = 20;
/// The longest an export may take before the bench gives up on it.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(900);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A star-shaped ring (so a simple polygon) around a center, as the web app stores one.
fn write_polygon(
    out: &mut String,
    rng: &mut Rng,
    n: usize,
    kind: &str,
    center: (f64, f64),
    radius: f64,
    points: usize,
) {
    write!(out, r#"{{"id":"polygon_{n}","points":["#).unwrap();
    for k in 0..points {
        let angle = std::f64::consts::TAU * k as f64 / points as f64;
        let r = radius * (1.0 + 0.12 * rng.unit());
        let (x, y) = (center.0 + r * angle.cos(), center.1 + r * angle.sin());
        let sep = if k == 0 { "" } else { "," };
        write!(out, r#"{sep}{{"x":{x:.2},"y":{y:.2}}}"#).unwrap();
    }
    write!(
        out,
        r#"],"type":"{kind}","class":"spheroid","confidence":0.9}}"#
    )
    .unwrap();
}

/// One image's polygons: 20 cells on a 5×4 grid, and on every tenth image a hole in the first.
fn polygons_json(image_idx: usize) -> String {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (image_idx as u64 + 1).wrapping_mul(0x1234_5677));
    let mut out = String::with_capacity(11_000);
    out.push('[');
    let (cell_w, cell_h) = (f64::from(IMAGE_SIZE) / 5.0, f64::from(IMAGE_SIZE) / 4.0);
    let mut first_center = (0.0, 0.0);
    for n in 0..POLYGONS_PER_IMAGE {
        let (col, row) = ((n % 5) as f64, (n / 5) as f64);
        let center = (
            (col + 0.5) * cell_w + 12.0 * rng.unit(),
            (row + 0.5) * cell_h + 12.0 * rng.unit(),
        );
        if n == 0 {
            first_center = center;
        } else {
            out.push(',');
        }
        let radius = 55.0 + 15.0 * rng.unit();
        write_polygon(
            &mut out,
            &mut rng,
            n + 1,
            "external",
            center,
            radius,
            POINTS_PER_POLYGON,
        );
    }
    if image_idx.is_multiple_of(HOLE_EVERY) {
        out.push(',');
        let n = POLYGONS_PER_IMAGE + 1;
        write_polygon(&mut out, &mut rng, n, "internal", first_center, 12.0, 8);
    }
    out.push(']');
    out
}

/// Fills the web app's tables with one user's project of `n_images` images; returns the user's
/// and the project's ids.
async fn fill(url: &str, n_images: usize) -> anyhow::Result<(String, String)> {
    let client = webapp::connect(url).await?;
    let user = webapp::new_id();
    let project = webapp::new_id();
    webapp::insert_user(&client, &user, "bench@example.org").await?;
    webapp::insert_project(
        &client,
        &project,
        "Spheroids at scale",
        &user,
        time::OffsetDateTime::now_utc(),
    )
    .await?;
    let started = Instant::now();
    let images: Vec<NewImage> = (0..n_images)
        .map(|idx| NewImage {
            width: Some(IMAGE_SIZE),
            height: Some(IMAGE_SIZE),
            file_size: Some(1_200_000),
            display_order: Some(idx as i32),
            ..NewImage::new(&project, &format!("spheroid_{idx:06}.png"))
        })
        .collect();
    webapp::insert_images(&client, &images).await?;
    println!(
        "fill: {n_images} image rows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut polygon_bytes = 0usize;
    let mut last_report = Instant::now();
    for (chunk_idx, chunk) in images.chunks(FILL_CHUNK).enumerate() {
        let segmentations: Vec<NewSegmentation> = chunk
            .iter()
            .enumerate()
            .map(|(i, image)| NewSegmentation {
                image_id: image.id.clone(),
                polygons: polygons_json(chunk_idx * FILL_CHUNK + i),
                image_width: Some(IMAGE_SIZE),
                image_height: Some(IMAGE_SIZE),
            })
            .collect();
        polygon_bytes += segmentations
            .iter()
            .map(|s| s.polygons.len())
            .sum::<usize>();
        webapp::insert_segmentations(&client, &segmentations).await?;
        let done = (chunk_idx * FILL_CHUNK + chunk.len()).min(n_images);
        if last_report.elapsed() >= Duration::from_secs(5) || done == n_images {
            last_report = Instant::now();
            println!(
                "fill: {done} of {n_images} segmentations, {:.0} MB of polygon text, {:.1} s",
                polygon_bytes as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let filled = started.elapsed();
    client.batch_execute("ANALYZE").await.context("ANALYZE")?;
    let size: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    println!(
        "fill: {n_images} images, {} polygons ({:.0} MB as JSON text) in {:.1} s (COPY through \
         webapp::insert_images / insert_segmentations), ANALYZE {:.1} s; database {:.0} MB",
        n_images * POLYGONS_PER_IMAGE + n_images.div_ceil(HOLE_EVERY),
        polygon_bytes as f64 / 1e6,
        filled.as_secs_f64(),
        (started.elapsed() - filled).as_secs_f64(),
        size as f64 / 1e6
    );
    Ok((user, project))
}

/// Milliseconds at quantile `q` of sorted durations (nearest rank).
fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1000.0
}

fn summary(latencies: &[Duration]) -> (f64, f64, f64) {
    let mut sorted = latencies.to_vec();
    sorted.sort_unstable();
    (
        quantile_ms(&sorted, 0.50),
        quantile_ms(&sorted, 0.99),
        quantile_ms(&sorted, 1.0),
    )
}

fn describe(latencies: &[Duration]) -> String {
    let (p50, p99, max) = summary(latencies);
    format!(
        "{} requests: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
        latencies.len()
    )
}

/// One command to Redis in RESP, for what the store does not offer (`INFO`, `CONFIG SET`).
async fn redis_command(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        write!(request, "${}\r\n{arg}\r\n", arg.len())?;
    }
    stream.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .context("redis did not answer")??;
        if n == 0 {
            bail!("redis closed the connection");
        }
        reply.extend_from_slice(&buf[..n]);
        let Some(eol) = reply.windows(2).position(|w| w == b"\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&reply[..eol])?;
        match head.as_bytes()[0] {
            b'+' => return Ok(head[1..].to_owned()),
            b'-' => bail!("redis: {}", &head[1..]),
            b'$' => {
                let len: usize = head[1..].parse()?;
                if reply.len() >= eol + 2 + len {
                    return Ok(String::from_utf8_lossy(&reply[eol + 2..eol + 2 + len]).into());
                }
            }
            _ => bail!("unexpected reply {head}"),
        }
    }
}

async fn aof_current_size(port: u16) -> anyhow::Result<u64> {
    let info = redis_command(port, &["INFO", "persistence"]).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("aof_current_size:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no aof_current_size in INFO persistence")
}

/// The file Redis appends to (Redis 7 keeps a base and increments under `appendonlydir`).
fn aof_incr_file(redis_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = redis_dir.join("appendonlydir");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.to_string_lossy().ends_with(".incr.aof"))
        .collect();
    files.sort();
    files.pop().context("no incremental AOF file")
}

/// A key with its ids (uuids) replaced, so one job's keys group with another's.
fn key_shape(key: &str) -> String {
    key.split(':')
        .map(|part| {
            let uuid = part.len() == 36 && part.bytes().filter(|b| *b == b'-').count() == 4;
            if uuid { "{id}" } else { part }
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// What the AOF holds between two offsets.
#[derive(Default)]
struct AofBreakdown {
    /// Count and bytes per command and key shape.
    commands: BTreeMap<String, (u64, u64)>,
    /// Count and bytes per kind of write: what one script call wrote (Redis logs a call that
    /// writes more than once as MULTI…EXEC, and a single write as itself).
    writes: BTreeMap<&'static str, (u64, u64)>,
}

const COMMIT: &str = "commit (HSET of the job's hash)";

/// The kind of a write by what it touched: an item's checkpoint (the job's items hash), a
/// commit (the job's own hash), or anything else.
fn write_kind(commands: &[String]) -> &'static str {
    if commands
        .iter()
        .any(|c| c.starts_with("HSET ") && c.ends_with(":{id}:items"))
    {
        "checkpoint (HSET of the job's items hash)"
    } else if commands
        .iter()
        .any(|c| c.starts_with("HSET ") && c.ends_with(":{id}"))
    {
        COMMIT
    } else {
        "other"
    }
}

fn aof_breakdown(file: &Path, from: u64, to: u64) -> anyhow::Result<AofBreakdown> {
    let bytes = std::fs::read(file)?;
    let end = (to as usize).min(bytes.len());
    let mut pos = from as usize;
    let mut out = AofBreakdown::default();
    let line = |pos: &mut usize| -> anyhow::Result<usize> {
        let rest = &bytes[*pos..end];
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated AOF record")?;
        let value = std::str::from_utf8(&rest[1..eol])?.parse()?;
        *pos += eol + 2;
        Ok(value)
    };
    // The commands of the MULTI being read, and where it began.
    let mut open: Option<(usize, Vec<String>)> = None;
    while pos < end {
        let start = pos;
        anyhow::ensure!(bytes[pos] == b'*', "AOF record does not start with *");
        let n_args = line(&mut pos)?;
        let mut args: Vec<String> = Vec::new();
        for _ in 0..n_args {
            let len = line(&mut pos)?;
            if args.len() < 2 {
                args.push(String::from_utf8_lossy(&bytes[pos..pos + len]).into_owned());
            }
            pos += len + 2;
        }
        let command = args.first().map(|c| c.to_uppercase()).unwrap_or_default();
        let what = match args.get(1) {
            Some(key) if !matches!(command.as_str(), "MULTI" | "EXEC" | "SELECT") => {
                format!("{command} {}", key_shape(key))
            }
            _ => command.clone(),
        };
        let entry = out.commands.entry(what.clone()).or_default();
        entry.0 += 1;
        entry.1 += (pos - start) as u64;
        match (command.as_str(), &mut open) {
            ("MULTI", _) => open = Some((start, Vec::new())),
            ("EXEC", Some((began, commands))) => {
                let entry = out.writes.entry(write_kind(commands)).or_default();
                entry.0 += 1;
                entry.1 += (pos - *began) as u64;
                open = None;
            }
            (_, Some((_, commands))) => commands.push(what),
            (_, None) => {
                let entry = out.writes.entry(write_kind(&[what])).or_default();
                entry.0 += 1;
                entry.1 += (pos - start) as u64;
            }
        }
    }
    Ok(out)
}

/// Samples a process's VmRSS (KiB) every 50 ms until stopped, with when (since `origin`).
fn sample_rss(
    pid: u32,
    origin: Instant,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Vec<(Duration, u64)>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while !stop.is_cancelled() {
            tick.tick().await;
            if let Some(kib) = proc_kib(pid, "VmRSS") {
                samples.push((origin.elapsed(), kib));
            }
        }
        samples
    })
}

/// The largest sample, and the samples at tenths of the run: where the memory went.
fn describe_rss(samples: &[(Duration, u64)]) -> String {
    let Some((peak_at, peak)) = samples.iter().max_by_key(|(_, kib)| *kib) else {
        return "no samples".into();
    };
    let mb = |kib: u64| kib as f64 / 1024.0;
    let profile: Vec<String> = (0..=10)
        .map(|tenth| {
            let (at, kib) = samples[(samples.len() - 1) * tenth / 10];
            format!("{:.0}s:{:.0}", at.as_secs_f64(), mb(kib))
        })
        .collect();
    format!(
        "peak VmRSS {:.1} MB at {:.1} s ({} samples every 50 ms; MB over the run {})",
        mb(*peak),
        peak_at.as_secs_f64(),
        samples.len(),
        profile.join(" ")
    )
}

struct Bench {
    http: reqwest::Client,
    api: String,
    token: String,
    project: String,
    store: Store,
    redis_port: u16,
    aof_file: PathBuf,
    postgres_url: String,
    worker_pid: u32,
}

/// Where Redis stood at a moment of an export.
struct Mark {
    at: Instant,
    aof: u64,
    events: u64,
    checkpoints: u64,
}

/// How far an export is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    Completed,
    /// Cancelled once the measurement window after its first event has passed.
    Window,
}

/// What one export measured.
struct ExportFigures {
    status: Value,
    status_bytes: usize,
    /// The size of the status answer at the end of the measurement window.
    window_answer: usize,
    /// Commit bytes per event in the measurement window, and over the whole export.
    window_per_event: Option<f64>,
    whole_per_event: Option<f64>,
}

impl Bench {
    async fn get(&self, path: &str) -> anyhow::Result<(Value, usize)> {
        let response = self
            .http
            .get(format!("{}{path}", self.api))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let code = response.status();
        let body = response.bytes().await?;
        anyhow::ensure!(
            code.is_success(),
            "GET {path}: {code} {}",
            String::from_utf8_lossy(&body)
        );
        Ok((serde_json::from_slice(&body)?, body.len()))
    }

    /// One page of the images listing and how long it took (request to the body's last byte).
    async fn images_page(&self, cursor: Option<&str>) -> anyhow::Result<(Value, Duration)> {
        let path = match cursor {
            Some(c) => format!(
                "/api/projects/{}/images?limit={PAGE_SIZE}&cursor={c}",
                self.project
            ),
            None => format!("/api/projects/{}/images?limit={PAGE_SIZE}", self.project),
        };
        let started = Instant::now();
        let (page, _) = self.get(&path).await?;
        Ok((page, started.elapsed()))
    }

    /// Walks the listing to its end; returns every image id in order.
    async fn walk_images(&self, n_images: usize, repeats: usize) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(n_images);
        let mut latencies = Vec::new();
        let mut cursor: Option<String> = None;
        let mut last_cursor: Option<String> = None;
        let mut polygons = 0u64;
        let started = Instant::now();
        let max_pages = n_images / PAGE_SIZE + 2;
        loop {
            anyhow::ensure!(latencies.len() < max_pages, "the listing does not end");
            let (page, took) = self.images_page(cursor.as_deref()).await?;
            latencies.push(took);
            let items = page["items"].as_array().context("items")?;
            polygons += items
                .iter()
                .filter_map(|i| i["polygonCount"].as_u64())
                .sum::<u64>();
            ids.extend(
                items
                    .iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_owned)),
            );
            match page["nextCursor"].as_str() {
                Some(next) => {
                    last_cursor = Some(next.to_owned());
                    cursor = last_cursor.clone();
                }
                None => break,
            }
            if latencies.len() % 1000 == 0 {
                println!(
                    "walk: {} pages, {:.1} s",
                    latencies.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        let distinct: HashSet<&String> = ids.iter().collect();
        println!(
            "walk: GET /api/projects/{{id}}/images?limit={PAGE_SIZE}, page after page with \
             nextCursor, one keep-alive connection: {} pages, {} images ({} distinct, \
             {polygons} polygons by polygonCount) in {:.1} s",
            latencies.len(),
            ids.len(),
            distinct.len(),
            started.elapsed().as_secs_f64()
        );
        println!("walk: every page: {}", describe(&latencies));
        let head = latencies.len().min(100);
        println!(
            "walk: pages 1-{head}: {}; the last {head} pages: {}",
            describe(&latencies[..head]),
            describe(&latencies[latencies.len() - head..])
        );

        // The last page and the first, asked in turn, so both see the same noise.
        let last_cursor = last_cursor.context("a single page: nothing to compare")?;
        let (mut last, mut first) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            let (page, took) = self.images_page(Some(&last_cursor)).await?;
            anyhow::ensure!(page["nextCursor"].is_null(), "the last page has a next");
            last.push(took);
            first.push(self.images_page(None).await?.1);
        }
        println!(
            "repeat: page {} (the last) {}",
            latencies.len(),
            describe(&last)
        );
        println!("repeat: page 1 (in turn with it) {}", describe(&first));
        let (last_p50, first_p50) = (summary(&last).0, summary(&first).0);
        println!(
            "repeat: p50 last / first = {:.2}; p99 last / first = {:.2}",
            last_p50 / first_p50,
            summary(&last).1 / summary(&first).1
        );
        Ok(ids)
    }

    /// The image count of the project, timed on its own: the api's project lookup (behind
    /// every listing page and status answer) makes it.
    async fn count_latency(&self, repeats: usize) -> anyhow::Result<()> {
        let client = webapp::connect(&self.postgres_url).await?;
        let sql = r#"SELECT count(*) FROM images i
                     WHERE i."projectId" = $1 AND NOT i."isVideoContainer""#;
        let mut latencies = Vec::new();
        for _ in 0..repeats {
            let started = Instant::now();
            client.query_one(sql, &[&self.project]).await?;
            latencies.push(started.elapsed());
        }
        println!(
            "count: the project's image count alone, straight on PostgreSQL: {}",
            describe(&latencies)
        );
        Ok(())
    }

    /// Where Redis stands: the AOF's size and the fleet's counters.
    async fn mark(&self) -> anyhow::Result<Mark> {
        let aof = aof_current_size(self.redis_port).await?;
        let stats = self.store.fleet_stats().await?;
        Ok(Mark {
            at: Instant::now(),
            aof,
            events: stats.events_published,
            checkpoints: stats.items_processed,
        })
    }

    /// Prints what Redis wrote between two marks: bytes per event all told, and by kind of
    /// write. Returns the bytes per event of commits alone.
    fn report_writes(
        &self,
        label: &str,
        what: &str,
        from: &Mark,
        to: &Mark,
    ) -> anyhow::Result<f64> {
        let events = to.events - from.events;
        let bytes = to.aof - from.aof;
        println!(
            "{label}: {what}: {:.1} s, Redis AOF +{bytes} bytes, {events} events published \
             (events_published of the fleet's counters), {} items checkpointed: {:.0} bytes per \
             event all told",
            (to.at - from.at).as_secs_f64(),
            to.checkpoints - from.checkpoints,
            bytes as f64 / events.max(1) as f64
        );
        let breakdown = aof_breakdown(&self.aof_file, from.aof, to.aof)?;
        for (kind, (count, bytes)) in &breakdown.writes {
            println!(
                "{label}:   {kind}: {count} writes, {bytes} bytes, {:.0} each",
                *bytes as f64 / *count as f64
            );
        }
        let mut rows: Vec<(&String, &(u64, u64))> = breakdown.commands.iter().collect();
        rows.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(*bytes));
        for (what, (count, bytes)) in rows.iter().take(6) {
            println!(
                "{label}:     {what}: {count} commands, {bytes} bytes, {:.0} each",
                *bytes as f64 / *count as f64,
            );
        }
        let commits = breakdown.writes.get(COMMIT).map_or(0, |(_, bytes)| *bytes);
        let per_event = commits as f64 / events.max(1) as f64;
        println!("{label}: {what}: commits alone {per_event:.0} bytes per event");
        Ok(per_event)
    }

    /// Runs one export from the POST until `completed`, or until the measurement window after
    /// its first event has passed and then cancels it, measuring as it goes.
    async fn export(
        &self,
        label: &str,
        options: Value,
        until: Until,
        window: Duration,
    ) -> anyhow::Result<ExportFigures> {
        let before = self.mark().await?;
        let body = serde_json::to_vec(&options)?;
        let stop = CancellationToken::new();
        let posted = Instant::now();
        let sampler = sample_rss(self.worker_pid, posted, stop.clone());
        let response = self
            .http
            .post(format!("{}/api/projects/{}/export", self.api, self.project))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let code = response.status();
        let answer: Value = response.json().await?;
        let post_took = posted.elapsed();
        anyhow::ensure!(code == 202, "{label}: export refused: {code} {answer}");
        let job = answer["jobId"].as_str().context("jobId")?.to_owned();
        let created = self.mark().await?;
        println!(
            "{label}: POST of {:.1} KB answered 202 in {:.0} ms; Redis AOF +{} bytes for the \
             new job (its image ids, fixed at creation)",
            body.len() as f64 / 1e3,
            post_took.as_secs_f64() * 1000.0,
            created.aof - before.aof
        );

        // Long-polls from the POST on: each answer comes when the job's seq passes the last seen.
        let job_path = format!("/api/projects/{}/export/{job}", self.project);
        let deadline = posted + EXPORT_TIMEOUT;
        let mut seq = 0u64;
        let mut first: Option<Mark> = None;
        let mut window_end: Option<Mark> = None;
        let mut window_answer = 0usize;
        let mut polls = 0u32;
        let mut last_report = Instant::now();
        loop {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{label}: not completed within {EXPORT_TIMEOUT:?} (seq {seq})"
            );
            let (status, bytes) = self
                .get(&format!("{job_path}/status?after={seq}&waitMs=30000"))
                .await?;
            polls += 1;
            seq = status["seq"].as_u64().unwrap_or(seq);
            let state = status["status"].as_str().unwrap_or_default();
            if first.is_none() && seq > 0 && state != "pending" {
                first = Some(self.mark().await?);
                println!(
                    "{label}: first event (seq {seq}, {state}, itemsTotal {}) {:.2} s after the \
                     POST was sent",
                    status["itemsTotal"],
                    posted.elapsed().as_secs_f64()
                );
            }
            if let (Some(first), None) = (&first, &window_end)
                && first.at.elapsed() >= window
                && state == "processing"
            {
                window_end = Some(self.mark().await?);
                window_answer = bytes;
                if until == Until::Window {
                    let cancelled = self
                        .http
                        .post(format!("{}{job_path}/cancel", self.api))
                        .bearer_auth(&self.token)
                        .send()
                        .await?;
                    let code = cancelled.status();
                    let status: Value = cancelled.json().await?;
                    anyhow::ensure!(
                        code == 200 && status["status"] == "cancelled",
                        "{label}: cancel: {code} {status}"
                    );
                    break;
                }
            }
            if last_report.elapsed() >= Duration::from_secs(15) {
                last_report = Instant::now();
                let fleet = self.store.fleet_stats().await?;
                let running: Vec<u64> = fleet.workers.iter().map(|w| w.running_jobs).collect();
                println!(
                    "{label}: {:.0} s: {state}, task {}, {} of {} items, progress {:.1}, worker \
                     VmRSS {:.0} MB; fleet: {} queued, jobs running per worker {running:?}",
                    posted.elapsed().as_secs_f64(),
                    status["currentTask"],
                    status["itemsCompleted"],
                    status["itemsTotal"],
                    status["progress"].as_f64().unwrap_or(0.0),
                    proc_kib(self.worker_pid, "VmRSS").unwrap_or(0) as f64 / 1024.0,
                    fleet.queue_waiting
                );
            }
            match state {
                "completed" => break,
                "failed" | "cancelled" => bail!("{label}: export ended {state}: {status}"),
                _ => {}
            }
        }
        let total = posted.elapsed();
        stop.cancel();
        let rss = sampler.await?;
        let hwm = proc_kib(self.worker_pid, "VmHWM").unwrap_or(0);
        let first = first.context("no first event")?;

        // Commits of the job after its end land within a moment; the AOF is written every
        // event loop turn.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let end = self.mark().await?;
        let written = wait_until(Duration::from_secs(5), || async {
            std::fs::metadata(&self.aof_file).is_ok_and(|m| m.len() >= end.aof)
        })
        .await;
        anyhow::ensure!(written, "the AOF file lags INFO's aof_current_size");
        let (status, status_bytes) = self.get(&format!("{job_path}/status")).await?;

        let state = status["status"].as_str().unwrap_or_default();
        let processing = total.saturating_sub(first.at - posted);
        println!(
            "{label}: {state} {:.1} s after the POST ({polls} long-polls), {:.1} s after its \
             first event; attempts {}",
            total.as_secs_f64(),
            processing.as_secs_f64(),
            status["attempts"]
        );
        if state == "completed" {
            let items_total = status["itemsTotal"].as_u64().unwrap_or(0);
            let processing_ms = status["processingTimeMs"].as_u64().unwrap_or(0);
            println!(
                "{label}: {items_total} items; processingTimeMs {processing_ms}: {:.0} items/s; \
                 {:.0} items/s from the first event to completed",
                items_total as f64 * 1000.0 / processing_ms.max(1) as f64,
                items_total as f64 / processing.as_secs_f64()
            );
            println!(
                "{label}: archive {} bytes ({:.1} MB); warnings {}",
                status["fileSize"],
                status["fileSize"].as_f64().unwrap_or(0.0) / 1e6,
                status["warnings"].as_array().map_or(0, Vec::len)
            );
        } else {
            println!(
                "{label}: cancelled at {} of {} items",
                status["itemsCompleted"], status["itemsTotal"]
            );
        }
        println!(
            "{label}: worker RSS from the POST to the end: {}; VmHWM {:.1} MB (the process's \
             peak so far)",
            describe_rss(&rss),
            hwm as f64 / 1024.0
        );
        let window_per_event = match &window_end {
            Some(window_end) => Some(self.report_writes(
                label,
                "measurement window (first event + the window)",
                &first,
                window_end,
            )?),
            None => None,
        };
        let whole_per_event = if state == "completed" {
            Some(self.report_writes(label, "the POST's answer to completed", &created, &end)?)
        } else {
            None
        };
        println!(
            "{label}: status answer {status_bytes} bytes (plain GET at the end); {window_answer} \
             bytes at the end of the window; options {}",
            status["options"]
        );
        Ok(ExportFigures {
            status,
            status_bytes,
            window_answer,
            window_per_event,
            whole_per_event,
        })
    }
}

/// Starts the worker process on the stack's Redis, data dir and the web app's database.
fn spawn_worker(
    redis_url: &str,
    data_dir: &Path,
    postgres_url: &str,
    uploads: &Path,
) -> anyhow::Result<(tokio::process::Child, PathBuf)> {
    let log_path = data_dir.join("worker.log");
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_e2e-worker"))
        .arg("--redis-url")
        .arg(redis_url)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--project-source")
        .arg(postgres_url)
        .arg("--uploads-dir")
        .arg(uploads)
        .args(["--item-parallelism", "2", "--concurrency", "1"])
        .args(["--name", "bench-worker"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .kill_on_drop(true)
        .spawn()
        .context("starting e2e-worker")?;
    Ok((child, log_path))
}

/// Stops the worker as an operator would (SIGTERM), killing it if it does not exit in 15 s.
async fn stop_worker(child: &mut tokio::process::Child) -> anyhow::Result<()> {
    let Some(pid) = child.id() else {
        return Ok(());
    };
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
        Ok(status) => {
            println!("worker: exited after SIGTERM with {}", status?);
            Ok(())
        }
        Err(_) => {
            child.kill().await?;
            bail!("the worker did not exit within 15 s of SIGTERM")
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n_images = env_or("CELLPORT_BENCH_IMAGES", 100_000);
    let repeats = env_or("CELLPORT_BENCH_REPEATS", 300);
    let window = Duration::from_secs(env_or("CELLPORT_BENCH_WINDOW_SECONDS", 60) as u64);
    let selected_full = env_or("CELLPORT_BENCH_SELECTED_FULL", 0) != 0;
    let started = Instant::now();

    let mut postgres = PostgresServer::start(PostgresOptions::default()).await?;
    let postgres_url = postgres.create_webapp_database("webapp").await?;
    let mut redis = RedisServer::start(RedisOptions {
        aof: true,
        ..RedisOptions::default()
    })
    .await?;
    // An automatic rewrite would shrink the AOF in the middle of a measurement.
    redis_command(
        redis.port(),
        &["CONFIG", "SET", "auto-aof-rewrite-percentage", "0"],
    )
    .await?;
    let data = tempfile::tempdir()?;
    let uploads = data.path().join("uploads");
    std::fs::create_dir_all(&uploads)?;
    println!(
        "servers: PostgreSQL on port {}, Redis (AOF everysec) on port {}, {:.1} s",
        postgres.port(),
        redis.port(),
        started.elapsed().as_secs_f64()
    );

    let (user, project) = fill(&postgres_url, n_images).await?;

    let listener = local_listener().await?;
    let api_addr = listener.local_addr()?;
    let config = ApiConfig {
        redis_url: redis.url(),
        data_dir: data.path().to_owned(),
        source: SourceConfig::Postgres {
            url: postgres_url.clone(),
            uploads_dir: uploads.clone(),
        },
        storage: cellport_io::StorageConfig::Dir(data.path().to_owned()),
        jwt_secret: jwt_secret(),
        token_rules: TokenRules::default(),
        events_url: "ws://127.0.0.1:9/ws".into(),
        max_active_per_user: 2,
        cors_origins: Default::default(),
    };
    let shutdown = CancellationToken::new();
    let api = tokio::spawn(cellport_api::run(
        listener,
        config,
        shutdown.clone().cancelled_owned(),
    ));
    let (mut worker, worker_log) =
        spawn_worker(&redis.url(), data.path(), &postgres_url, &uploads)?;

    let result = async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let api_url = format!("http://{api_addr}");
        let ready = wait_until(Duration::from_secs(20), || {
            let (http, url) = (http.clone(), format!("{api_url}/readyz"));
            async move {
                http.get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await;
        anyhow::ensure!(ready, "the api did not become ready");
        let store = Store::connect(&redis.url()).await?;
        let worker_up = wait_until(Duration::from_secs(20), || async {
            store
                .fleet_stats()
                .await
                .is_ok_and(|s| !s.workers.is_empty())
        })
        .await;
        anyhow::ensure!(worker_up, "the worker did not register");
        let user_id: UserId = user.parse()?;
        let bench = Bench {
            http,
            api: api_url,
            token: JwtKeys::new(&jwt_secret()).mint(&user_id, false, Duration::from_secs(3600)),
            project,
            store,
            redis_port: redis.port(),
            aof_file: aof_incr_file(redis.dir())?,
            postgres_url: postgres_url.clone(),
            worker_pid: worker.id().context("worker pid")?,
        };

        let ids = bench.walk_images(n_images, repeats).await?;
        bench.count_latency(repeats.min(50)).await?;

        let options = json!({
            "includeOriginalImages": false,
            "includeVisualizations": false,
            "includeDocumentation": true,
            "annotationFormats": ["coco", "json", "yolo"],
            "metricsFormats": ["csv", "json"],
        });
        let all = bench
            .export("export all", options.clone(), Until::Completed, window)
            .await?;

        // The same with every image named; the largest selection that fits the body limit.
        let mut selection = options;
        let per_id = ids.first().map_or(39, |id| id.len() + 3);
        let fits = (cellport_api::MAX_BODY_BYTES - 1024) / per_id;
        if fits < ids.len() {
            println!(
                "selection: {} ids do not fit MAX_BODY_BYTES ({}): selecting {fits}",
                ids.len(),
                cellport_api::MAX_BODY_BYTES
            );
        }
        let selected = &ids[..ids.len().min(fits)];
        selection["selectedImageIds"] = json!(selected);
        let until = if selected_full {
            Until::Completed
        } else {
            Until::Window
        };
        let figures = bench
            .export("export selected", selection, until, window)
            .await?;
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{a:.0} vs {b:.0} bytes, ratio {:.3}", a / b),
            _ => "not measured".to_owned(),
        };
        println!(
            "selection vs all: commit bytes per event in the window: {}; status answer at the \
             window's end {} vs {} bytes",
            ratio(figures.window_per_event, all.window_per_event),
            figures.window_answer,
            all.window_answer
        );
        if figures.whole_per_event.is_some() {
            println!(
                "selection vs all: commit bytes per event over the whole export: {}",
                ratio(figures.whole_per_event, all.whole_per_event)
            );
        }
        let mut inline = figures.status.clone();
        inline["options"]["selectedImageIds"] = json!(selected);
        inline["options"]
            .as_object_mut()
            .context("options")?
            .remove("selectedImageCount");
        let inline_bytes = serde_json::to_vec(&inline)?.len();
        println!(
            "export selected: with the {} ids inline in options, the same status answer would \
             weigh {inline_bytes} bytes ({:.0}x the {} it weighs)",
            selected.len(),
            inline_bytes as f64 / figures.status_bytes as f64,
            figures.status_bytes
        );
        anyhow::Ok(())
    }
    .await;

    // Stop everything whatever happened: the worker by SIGTERM, the api by its shutdown, then
    // the servers.
    let worker_stopped = stop_worker(&mut worker).await;
    let log = std::fs::read_to_string(&worker_log).unwrap_or_default();
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    println!(
        "worker log: {} lines, {} warnings or errors",
        log.lines().count(),
        problems.len()
    );
    // A short log is printed whole when something went wrong: the lines around a warning
    // say what the worker was doing.
    let shown: Vec<&str> = if problems.is_empty() || log.lines().count() > 60 {
        problems.iter().take(10).copied().collect()
    } else {
        log.lines().collect()
    };
    for line in shown {
        println!("worker log: {line}");
    }
    shutdown.cancel();
    match tokio::time::timeout(Duration::from_secs(15), api).await {
        Ok(joined) => joined??,
        Err(_) => println!("api: did not stop within 15 s"),
    }
    redis.shutdown().await?;
    postgres.stop().await?;
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    result?;
    worker_stopped
}
