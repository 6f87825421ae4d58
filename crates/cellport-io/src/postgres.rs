//! The web app's PostgreSQL as a project source (SPEC §10): its tables read in place through a
//! small read-only pool, its files under the uploads directory. Nothing is imported or copied,
//! and nothing is ever written there.
//!
//! Images are paged with a keyset cursor over the project order (`"displayOrder"` nulls last,
//! `"createdAt"`, `id`). The web app indexes images only by `("projectId", "displayOrder")`, so
//! a page is read in two parts the index serves: the images with a display order, then, once
//! those run out, the ones without.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use cellport_core::{
    ImageId, ImageRecord, Point, Polygon, PolygonKind, Project, ProjectId, Viewer,
};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::value::RawValue;
use time::{OffsetDateTime, PrimitiveDateTime};
use tokio::fs::File;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, ToSql};

use crate::source::{ImageIdPage, ImagePage, ImageReader, ProjectSource, SourceError};

/// Connections the pool holds at most: the source answers listings and page reads, and the
/// web app's database serves the web app first.
const MAX_CONNECTIONS: usize = 4;

/// How long opening a connection may take: an unreachable host answers within it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a caller waits for a pooled connection, or for a new one to be made.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of every session: transactions are read-only, so this source cannot write even
/// by mistake, and no statement holds a connection for long.
const SESSION_OPTIONS: &str = "-c default_transaction_read_only=on -c statement_timeout=5s";

/// The reason given for a file whose path leaves the uploads directory.
const LEAVES_UPLOADS: &str = "path leaves the uploads directory";

/// Reads projects from the web app's database and their files from its uploads directory.
pub struct PostgresProjectSource {
    pool: Pool,
    uploads_dir: PathBuf,
}

impl fmt::Debug for PostgresProjectSource {
    // The pool's configuration names the database's user and host: only the directory prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresProjectSource")
            .field("uploads_dir", &self.uploads_dir)
            .finish_non_exhaustive()
    }
}

impl PostgresProjectSource {
    /// A source on the database at `url` (a `postgres://` URL) whose files live under
    /// `uploads_dir`. Connects lazily: the database may be down now and come up later, and
    /// until then every call answers [`SourceError::Unavailable`].
    pub fn connect(url: &str, uploads_dir: PathBuf) -> Result<PostgresProjectSource, SourceError> {
        // A URL that does not parse will not get better by retrying, but there is no better
        // variant for it, and it is met at startup, which stops on any error.
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| SourceError::Unavailable(format!("cannot read the database url: {e}")))?;
        // Later settings win, so the read-only one stays whatever the URL says.
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {SESSION_OPTIONS}"),
            _ => SESSION_OPTIONS.to_owned(),
        };
        config.options(options).connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("cellport");
        }
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(MAX_CONNECTIONS)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| SourceError::Unavailable(format!("cannot build the pool: {e}")))?;
        Ok(PostgresProjectSource { pool, uploads_dir })
    }

    async fn client(&self) -> Result<Object, SourceError> {
        self.pool
            .get()
            .await
            .map_err(|e| SourceError::Unavailable(e.to_string()))
    }
}

/// A failed statement: the database is down or busy (worth retrying), unless the schema is not
/// the one this source reads or the role may not read it, which retrying does not mend.
fn query_error(e: tokio_postgres::Error) -> SourceError {
    // SQLSTATE class 42: syntax error or access rule violation (an unknown table or column, a
    // refused privilege).
    let schema_or_permission = e.code().is_some_and(|code| code.code().starts_with("42"));
    if schema_or_permission {
        SourceError::Invalid(e.to_string())
    } else {
        SourceError::Unavailable(e.to_string())
    }
}

async fn query(
    client: &Object,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, SourceError> {
    let statement = client.prepare_cached(sql).await.map_err(query_error)?;
    client.query(&statement, params).await.map_err(query_error)
}

/// Column `idx` of `row`, or [`SourceError::Invalid`] naming it.
fn column<'a, T: FromSql<'a>>(row: &'a Row, idx: usize) -> Result<T, SourceError> {
    row.try_get(idx).map_err(|e| {
        let name = row.columns().get(idx).map_or("?", |c| c.name());
        SourceError::Invalid(format!("column {name}: {e}"))
    })
}

/// One of the web app's ids as Cellport's id type.
fn parse_id<T: FromStr<Err: fmt::Display>>(raw: &str, what: &str) -> Result<T, SourceError> {
    raw.parse()
        .map_err(|e| SourceError::Invalid(format!("{what} {raw:?}: {e}")))
}

// Projects and who sees them.

/// A project as [`project_from_row`] reads it (alias `p`): its images without video
/// containers, and its members: accepted shares' users, by id or by their address (in any
/// case), without the owner, in id order.
const PROJECT_COLUMNS: &str = r#"p.id, p.title, p."userId", p."createdAt",
    (SELECT count(*) FROM images i WHERE i."projectId" = p.id AND NOT i."isVideoContainer"),
    ARRAY(
        SELECT m.id FROM (
            SELECT s."sharedWithId" AS id FROM project_shares s
            WHERE s."projectId" = p.id AND s.status = 'accepted' AND s."sharedWithId" IS NOT NULL
            UNION
            SELECT u.id FROM project_shares s JOIN users u ON lower(u.email) = lower(s.email)
            WHERE s."projectId" = p.id AND s.status = 'accepted'
        ) m
        WHERE m.id <> p."userId"
        ORDER BY m.id
    )"#;

/// A share (alias `s`) that shows its project to the viewer: accepted, and naming the user
/// (`$1`), their account's address, or their token's address (`$2`, may be null).
const SHARED_WITH_VIEWER: &str = r#"s.status = 'accepted' AND (
    s."sharedWithId" = $1
    OR lower(s.email) = lower($2::text)
    OR lower(s.email) = (SELECT lower(u.email) FROM users u WHERE u.id = $1))"#;

fn project_from_row(row: &Row) -> Result<Project, SourceError> {
    let created_at: PrimitiveDateTime = column(row, 3)?;
    let image_count: i64 = column(row, 4)?;
    let members: Vec<&str> = column(row, 5)?;
    Ok(Project {
        id: parse_id(column(row, 0)?, "project id")?,
        name: column(row, 1)?,
        owner: parse_id(column(row, 2)?, "user id")?,
        members: members
            .into_iter()
            .map(|m| parse_id(m, "user id"))
            .collect::<Result<_, _>>()?,
        scale: None,
        image_count: u64::try_from(image_count).unwrap_or(0),
        // The web app writes UTC into columns without a zone.
        created_at: created_at.assume_utc(),
    })
}

// Paging.

/// Where a page ends in the project order. Written into a query string as
/// `<display order, or n>~<created at, µs since 1970>~<id>`, with the id's `@` (the one
/// character of ids a query string would escape) as `~`.
#[derive(Debug, Clone, PartialEq)]
struct Cursor {
    display_order: Option<i32>,
    created_at: PrimitiveDateTime,
    id: String,
}

impl Cursor {
    /// The position after the page a cursor ended; `None` for the first page.
    fn parse(raw: Option<&str>) -> Result<Option<Cursor>, SourceError> {
        let raw = match raw {
            None | Some("") => return Ok(None),
            Some(raw) => raw,
        };
        let bad = || SourceError::BadCursor(raw.to_owned());
        let mut fields = raw.splitn(3, '~');
        let (Some(order), Some(micros), Some(id)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        let display_order = match order {
            "n" => None,
            order => Some(order.parse().map_err(|_| bad())?),
        };
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        let created_at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
            .map_err(|_| bad())?;
        let id = id.replace('~', "@");
        id.parse::<ImageId>().map_err(|_| bad())?;
        Ok(Some(Cursor {
            display_order,
            created_at: PrimitiveDateTime::new(created_at.date(), created_at.time()),
            id,
        }))
    }

    /// The position of a page row (columns: id, display order, created at).
    fn of_row(row: &Row) -> Result<Cursor, SourceError> {
        Ok(Cursor {
            display_order: column(row, 1)?,
            created_at: column(row, 2)?,
            id: column(row, 0)?,
        })
    }

    fn encode(&self) -> String {
        let order = self
            .display_order
            .map_or_else(|| "n".to_owned(), |order| order.to_string());
        let micros = self.created_at.assume_utc().unix_timestamp_nanos() / 1_000;
        format!("{order}~{micros}~{}", self.id.replace('@', "~"))
    }
}

/// The two parts of the project order: images with a display order, then those without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Ordered,
    Unordered,
}

/// The columns every image query returns, in this order: a page's keys first.
const IMAGE_COLUMNS: &str = r#"i.id, i."displayOrder", i."createdAt", i.name, i.width, i.height,
    i."fileSize", s.polygons, s."imageWidth", s."imageHeight""#;

/// The statement reading up to `$2` images of project `$1` in one part, from its start or
/// after a position (`$3`.. : the display order in the ordered part, then created at and id).
/// Each shape keeps to one range of `("projectId", "displayOrder")`, so the index finds the
/// page's rows without reading the project's others. Images that share a display order, or
/// have none, no index orders further: those are all read and the page's picked from them.
fn page_sql(part: Part, after: bool, with_polygons: bool) -> String {
    let (condition, order) = match (part, after) {
        (Part::Ordered, false) => (
            r#"i."displayOrder" IS NOT NULL"#,
            r#"i."displayOrder", i."createdAt", i.id"#,
        ),
        (Part::Ordered, true) => (
            r#"i."displayOrder" >= $3
               AND (i."displayOrder" > $3 OR (i."createdAt", i.id) > ($4, $5))"#,
            r#"i."displayOrder", i."createdAt", i.id"#,
        ),
        (Part::Unordered, false) => (r#"i."displayOrder" IS NULL"#, r#"i."createdAt", i.id"#),
        (Part::Unordered, true) => (
            r#"i."displayOrder" IS NULL AND (i."createdAt", i.id) > ($3, $4)"#,
            r#"i."createdAt", i.id"#,
        ),
    };
    let page_columns = if with_polygons {
        r#"i.id, i."displayOrder", i."createdAt", i.name, i.width, i.height, i."fileSize""#
    } else {
        r#"i.id, i."displayOrder", i."createdAt""#
    };
    let page = format!(
        r#"SELECT {page_columns} FROM images i
           WHERE i."projectId" = $1 AND NOT i."isVideoContainer" AND {condition}
           ORDER BY {order} LIMIT $2"#
    );
    if with_polygons {
        // The page is chosen first, so only its rows meet the segmentations.
        format!(
            r#"SELECT {IMAGE_COLUMNS} FROM ({page}) i
               LEFT JOIN segmentations s ON s."imageId" = i.id
               ORDER BY {order}"#
        )
    } else {
        page
    }
}

impl PostgresProjectSource {
    /// Up to `limit` rows after `cursor` in project order, and the cursor after them when more
    /// follow. One row more than asked is read to know.
    async fn page_rows(
        &self,
        project: &ProjectId,
        cursor: Option<&str>,
        limit: usize,
        with_polygons: bool,
    ) -> Result<(Vec<Row>, Option<String>), SourceError> {
        let after = Cursor::parse(cursor)?;
        let wanted = limit.saturating_add(1);
        let sql_limit = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let project = project.as_str();
        let client = self.client().await?;
        let mut rows = match &after {
            None => {
                let sql = page_sql(Part::Ordered, false, with_polygons);
                query(&client, &sql, &[&project, &sql_limit(wanted)]).await?
            }
            Some(
                at @ Cursor {
                    display_order: Some(order),
                    ..
                },
            ) => {
                let sql = page_sql(Part::Ordered, true, with_polygons);
                let params: [&(dyn ToSql + Sync); 5] =
                    [&project, &sql_limit(wanted), order, &at.created_at, &at.id];
                query(&client, &sql, &params).await?
            }
            Some(at) => {
                let sql = page_sql(Part::Unordered, true, with_polygons);
                let params: [&(dyn ToSql + Sync); 4] =
                    [&project, &sql_limit(wanted), &at.created_at, &at.id];
                query(&client, &sql, &params).await?
            }
        };
        let in_ordered_part = after.as_ref().is_none_or(|at| at.display_order.is_some());
        if in_ordered_part && rows.len() < wanted {
            let sql = page_sql(Part::Unordered, false, with_polygons);
            let rest = sql_limit(wanted - rows.len());
            rows.extend(query(&client, &sql, &[&project, &rest]).await?);
        }
        let next = if rows.len() > limit {
            rows.truncate(limit);
            Some(match rows.last() {
                Some(last) => Cursor::of_row(last)?.encode(),
                // An empty page (a limit of 0) goes nowhere: the next starts where it did.
                None => cursor.unwrap_or_default().to_owned(),
            })
        } else {
            None
        };
        Ok((rows, next))
    }
}

// Images.

/// A width and height when both are known.
fn known_size(width: Option<i32>, height: Option<i32>) -> Option<(u32, u32)> {
    let width = u32::try_from(width?).ok().filter(|w| *w > 0)?;
    let height = u32::try_from(height?).ok().filter(|h| *h > 0)?;
    Some((width, height))
}

/// An image from a row of [`IMAGE_COLUMNS`].
fn image_from_row(row: &Row) -> Result<ImageRecord, SourceError> {
    let id: &str = column(row, 0)?;
    let name: String = column(row, 3)?;
    let file_size: Option<i64> = column(row, 6)?;
    let polygons: Option<&str> = column(row, 7)?;
    // The model's input size is the one the polygons' coordinates are in.
    let (width, height) = known_size(column(row, 8)?, column(row, 9)?)
        .or(known_size(column(row, 4)?, column(row, 5)?))
        .unwrap_or((0, 0));
    let mut warnings = Vec::new();
    let polygons = match polygons {
        Some(text) => read_polygons(&name, text, &mut warnings),
        None => Vec::new(),
    };
    Ok(ImageRecord {
        id: parse_id(id, "image id")?,
        name,
        width,
        height,
        size_bytes: file_size.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        polygons,
        warnings,
    })
}

/// An object of a segmentation's polygon array, as far as Cellport reads it: every other key
/// (ids, classes, confidences, an image embedding) is skipped without being kept.
#[derive(Deserialize)]
struct RawPolygon<'a> {
    #[serde(borrow, default)]
    points: Option<&'a RawValue>,
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    geometry: Option<std::borrow::Cow<'a, str>>,
}

/// What one object of the array turned out to be.
enum Entry {
    Polygon(Polygon),
    Polyline,
    UnknownType(String),
    Unreadable,
}

fn read_entry(raw: &RawValue) -> Entry {
    let Ok(object) = serde_json::from_str::<RawPolygon>(raw.get()) else {
        return Entry::Unreadable;
    };
    if object.geometry.as_deref() == Some("polyline") {
        return Entry::Polyline;
    }
    let kind = match object.kind.as_deref() {
        None | Some("external") => PolygonKind::External,
        Some("internal") => PolygonKind::Internal,
        Some(other) => return Entry::UnknownType(other.to_owned()),
    };
    match object
        .points
        .map(|points| serde_json::from_str::<Vec<Point>>(points.get()))
    {
        Some(Ok(points)) => Entry::Polygon(Polygon { kind, points }),
        _ => Entry::Unreadable,
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The polygons of a segmentation's `polygons` text; what is left out is told in `warnings`.
fn read_polygons(image: &str, text: &str, warnings: &mut Vec<String>) -> Vec<Polygon> {
    let entries: Vec<&RawValue> = match serde_json::from_str(text) {
        Ok(entries) => entries,
        Err(e) => {
            warnings.push(format!(
                "image {image}: segmentation unreadable ({e}): no polygons"
            ));
            return Vec::new();
        }
    };
    let mut polygons = Vec::with_capacity(entries.len());
    let mut polylines = 0;
    let mut unknown = 0;
    let mut unknown_types = BTreeSet::new();
    let mut unreadable = 0;
    for entry in entries {
        match read_entry(entry) {
            Entry::Polygon(polygon) => polygons.push(polygon),
            Entry::Polyline => polylines += 1,
            Entry::UnknownType(kind) => {
                unknown += 1;
                unknown_types.insert(kind);
            }
            Entry::Unreadable => unreadable += 1,
        }
    }
    if polylines > 0 {
        let n = plural(polylines, "polyline", "polylines");
        warnings.push(format!("image {image}: {n} skipped (not polygons)"));
    }
    if unknown > 0 {
        let n = plural(unknown, "object", "objects");
        let types: Vec<String> = unknown_types.iter().map(|t| format!("{t:?}")).collect();
        warnings.push(format!(
            "image {image}: {n} skipped (unknown type {})",
            types.join(", ")
        ));
    }
    if unreadable > 0 {
        let n = plural(unreadable, "polygon", "polygons");
        warnings.push(format!("image {image}: {n} skipped (unreadable points)"));
    }
    polygons
}

// Files.

/// Why an image's file is not there, from the error that said so; `None` for an error that
/// is not about the file (a failing disk).
fn file_missing_reason(e: &io::Error) -> Option<&'static str> {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory => Some("no such file"),
        io::ErrorKind::PermissionDenied => Some("permission denied"),
        io::ErrorKind::InvalidInput | io::ErrorKind::InvalidFilename => Some("not a valid path"),
        _ => None,
    }
}

impl PostgresProjectSource {
    /// The file at `original_path` under the uploads directory, opened; never one outside it.
    async fn open_upload(&self, image: &str, original_path: &str) -> Result<File, SourceError> {
        let missing = |reason: &str| SourceError::ImageFileMissing {
            image: image.to_owned(),
            reason: reason.to_owned(),
        };
        let relative = Path::new(original_path);
        let stays_inside = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !stays_inside {
            return Err(missing(LEAVES_UPLOADS));
        }
        let path = self.uploads_dir.join(relative);
        let fail = |e: io::Error| match file_missing_reason(&e) {
            Some(reason) => missing(reason),
            None => SourceError::Io {
                path: path.clone(),
                source: e,
            },
        };
        // A symlink may point anywhere: what counts is where the path resolves.
        let root = tokio::fs::canonicalize(&self.uploads_dir)
            .await
            .map_err(|e| match file_missing_reason(&e) {
                Some(_) => missing("the uploads directory is not available"),
                None => SourceError::Io {
                    path: self.uploads_dir.clone(),
                    source: e,
                },
            })?;
        let resolved = tokio::fs::canonicalize(&path).await.map_err(fail)?;
        if !resolved.starts_with(&root) {
            return Err(missing(LEAVES_UPLOADS));
        }
        // Checked before opening: opening a FIFO would block. The resolved path has no
        // symlink left, and opening refuses one swapped in since.
        if !tokio::fs::metadata(&resolved)
            .await
            .map_err(fail)?
            .is_file()
        {
            return Err(missing("not a file"));
        }
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&resolved)
            .await
            .map_err(fail)?;
        Ok(file)
    }
}

impl PostgresProjectSource {
    /// Every project of the web app, oldest first (`cellportctl project list` without a user).
    pub async fn all_projects(&self) -> Result<Vec<Project>, SourceError> {
        let client = self.client().await?;
        let sql =
            format!(r#"SELECT {PROJECT_COLUMNS} FROM projects p ORDER BY p."createdAt", p.id"#);
        let rows = query(&client, &sql, &[]).await?;
        rows.iter().map(project_from_row).collect()
    }
}

impl ProjectSource for PostgresProjectSource {
    fn project<'a>(
        &'a self,
        id: &'a ProjectId,
    ) -> BoxFuture<'a, Result<Option<Project>, SourceError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!("SELECT {PROJECT_COLUMNS} FROM projects p WHERE p.id = $1");
            let rows = query(&client, &sql, &[&id.as_str()]).await?;
            rows.first().map(project_from_row).transpose()
        })
    }

    fn visible_project<'a>(
        &'a self,
        id: &'a ProjectId,
        viewer: &'a Viewer,
    ) -> BoxFuture<'a, Result<Option<Project>, SourceError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!(
                r#"SELECT {PROJECT_COLUMNS} FROM projects p
                   WHERE p.id = $3 AND (p."userId" = $1 OR EXISTS (
                       SELECT 1 FROM project_shares s
                       WHERE s."projectId" = p.id AND {SHARED_WITH_VIEWER}))"#
            );
            let params: [&(dyn ToSql + Sync); 3] =
                [&viewer.user.as_str(), &viewer.email, &id.as_str()];
            let rows = query(&client, &sql, &params).await?;
            rows.first().map(project_from_row).transpose()
        })
    }

    fn projects_visible_to<'a>(
        &'a self,
        viewer: &'a Viewer,
    ) -> BoxFuture<'a, Result<Vec<Project>, SourceError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let sql = format!(
                r#"SELECT {PROJECT_COLUMNS} FROM projects p
                   WHERE p.id IN (
                       SELECT o.id FROM projects o WHERE o."userId" = $1
                       UNION ALL
                       SELECT s."projectId" FROM project_shares s WHERE {SHARED_WITH_VIEWER})
                   ORDER BY p."createdAt", p.id"#
            );
            let params: [&(dyn ToSql + Sync); 2] = [&viewer.user.as_str(), &viewer.email];
            let rows = query(&client, &sql, &params).await?;
            rows.iter().map(project_from_row).collect()
        })
    }

    fn image_page<'a>(
        &'a self,
        project: &'a ProjectId,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ImagePage, SourceError>> {
        Box::pin(async move {
            let (rows, next) = self.page_rows(project, cursor, limit, true).await?;
            let images = rows.iter().map(image_from_row).collect::<Result<_, _>>()?;
            Ok(ImagePage { images, next })
        })
    }

    fn image_id_page<'a>(
        &'a self,
        project: &'a ProjectId,
        cursor: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<ImageIdPage, SourceError>> {
        Box::pin(async move {
            let (rows, next) = self.page_rows(project, cursor, limit, false).await?;
            let ids = rows
                .iter()
                .map(|row| parse_id(column(row, 0)?, "image id"))
                .collect::<Result<_, _>>()?;
            Ok(ImageIdPage { ids, next })
        })
    }

    fn images_by_ids<'a>(
        &'a self,
        project: &'a ProjectId,
        ids: &'a [ImageId],
    ) -> BoxFuture<'a, Result<Vec<ImageRecord>, SourceError>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let client = self.client().await?;
            let sql = format!(
                r#"SELECT {IMAGE_COLUMNS} FROM images i
                   LEFT JOIN segmentations s ON s."imageId" = i.id
                   WHERE i.id = ANY($2) AND i."projectId" = $1 AND NOT i."isVideoContainer""#
            );
            let wanted: Vec<&str> = ids.iter().map(ImageId::as_str).collect();
            let rows = query(&client, &sql, &[&project.as_str(), &wanted]).await?;
            let mut found: HashMap<ImageId, ImageRecord> = rows
                .iter()
                .map(|row| image_from_row(row).map(|image| (image.id.clone(), image)))
                .collect::<Result<_, _>>()?;
            Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
        })
    }

    fn open_image<'a>(
        &'a self,
        project: &'a ProjectId,
        image: &'a ImageRecord,
    ) -> BoxFuture<'a, Result<ImageReader, SourceError>> {
        Box::pin(async move {
            let original_path: String = {
                let client = self.client().await?;
                let rows = query(
                    &client,
                    r#"SELECT "originalPath" FROM images WHERE id = $1 AND "projectId" = $2"#,
                    &[&image.id.as_str(), &project.as_str()],
                )
                .await?;
                match rows.first() {
                    Some(row) => column(row, 0)?,
                    None => {
                        return Err(SourceError::ImageFileMissing {
                            image: image.name.clone(),
                            reason: "the image is no longer in the project".to_owned(),
                        });
                    }
                }
            };
            let file = self.open_upload(&image.name, &original_path).await?;
            Ok(Box::new(file) as ImageReader)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_in_a_query_string_alphabet() {
        let check = |display_order: Option<i32>, id: &str| {
            let cursor = Cursor {
                display_order,
                created_at: time::macros::datetime!(2024-03-01 10:00:03.250),
                id: id.to_owned(),
            };
            let encoded = cursor.encode();
            assert!(
                encoded.len() <= 200
                    && encoded
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b)),
                "{encoded:?}"
            );
            assert_eq!(Cursor::parse(Some(&encoded)).unwrap(), Some(cursor));
        };
        check(Some(3), "a0000000-0000-4000-8000-000000000004");
        check(Some(-7), "a0000000-0000-4000-8000-000000000004");
        check(None, "image_1.png");
        check(Some(i32::MAX), "user@example.org");
        check(None, &"x".repeat(128));
    }

    #[test]
    fn foreign_cursors_are_refused() {
        for raw in [
            "100",
            "n~x~a",
            "1~2",
            "q~5~a",
            "1~5~",
            "1~5~a/b",
            "1~999999999999999999~a",
        ] {
            assert!(
                matches!(Cursor::parse(Some(raw)), Err(SourceError::BadCursor(_))),
                "{raw:?}"
            );
        }
        assert_eq!(Cursor::parse(Some("")).unwrap(), None);
        assert_eq!(Cursor::parse(None).unwrap(), None);
    }
}
