//! Writes rows into the web app's tables ([`crate::postgres::WEBAPP_SCHEMA`]) the way the web
//! app does: tests, `cellportctl demo --postgres` and benchmarks fill databases with it, and
//! Cellport reads them back through its project source (SPEC §10).
//!
//! Row ids are text UUIDs made here, as the web app's Prisma client makes them; timestamps are
//! written as UTC into the `TIMESTAMP(3)` columns, which carry no time zone. One row at a time
//! with the `insert_*` functions; a whole project's images or segmentations with
//! [`insert_images`] and [`insert_segmentations`], which stream them through `COPY`.

use std::pin::pin;

use anyhow::Context;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

/// What the web app stores for a password: a bcrypt hash, never read by Cellport.
const PASSWORD_HASH: &str = "$2b$10$cellportcellportcellportcellportcellportcellportcell";

/// A client to write with, its connection driven by a spawned task.
pub async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to the web app's database")?;
    tokio::spawn(connection);
    Ok(client)
}

/// A fresh row id, as the web app's client makes them.
pub fn new_id() -> String {
    Uuid::new_v4().to_string()
}

/// The web app's `TIMESTAMP(3)` columns hold UTC without a zone.
fn utc(at: OffsetDateTime) -> PrimitiveDateTime {
    let at = at.to_offset(UtcOffset::UTC);
    PrimitiveDateTime::new(at.date(), at.time())
}

/// Adds a user who signed up with `email`.
pub async fn insert_user(client: &Client, id: &str, email: &str) -> anyhow::Result<()> {
    let now = utc(OffsetDateTime::now_utc());
    client
        .execute(
            r#"INSERT INTO users (id, email, password, "emailVerified", "createdAt", "updatedAt")
               VALUES ($1, $2, $3, true, $4, $4)"#,
            &[&id, &email, &PASSWORD_HASH, &now],
        )
        .await
        .with_context(|| format!("inserting user {id}"))?;
    Ok(())
}

/// Adds a project titled `title`, owned by the user `owner`.
pub async fn insert_project(
    client: &Client,
    id: &str,
    title: &str,
    owner: &str,
    created_at: OffsetDateTime,
) -> anyhow::Result<()> {
    client
        .execute(
            r#"INSERT INTO projects (id, title, "userId", "createdAt", "updatedAt")
               VALUES ($1, $2, $3, $4, $4)"#,
            &[&id, &title, &owner, &utc(created_at)],
        )
        .await
        .with_context(|| format!("inserting project {id}"))?;
    Ok(())
}

/// One row of `images`. [`NewImage::new`] fills in what the web app would; change the rest
/// with struct update syntax: `NewImage { display_order: None, ..NewImage::new(project, "a.png") }`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewImage {
    pub id: String,
    pub project_id: String,
    pub name: String,
    /// Relative to the uploads directory.
    pub original_path: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub file_size: Option<i64>,
    pub display_order: Option<i32>,
    pub is_video_container: bool,
    pub created_at: OffsetDateTime,
}

impl NewImage {
    /// An uploaded image: a fresh id, the file at `<project id>/originals/<name>`, no known
    /// size, no display order, created now.
    pub fn new(project_id: &str, name: &str) -> NewImage {
        NewImage {
            id: new_id(),
            project_id: project_id.to_owned(),
            name: name.to_owned(),
            original_path: format!("{project_id}/originals/{name}"),
            width: None,
            height: None,
            file_size: None,
            display_order: None,
            is_video_container: false,
            created_at: OffsetDateTime::now_utc(),
        }
    }
}

const IMAGE_COLUMNS: &str = r#"id, name, "originalPath", "projectId", width, height, "fileSize",
    "displayOrder", "isVideoContainer", "segmentationStatus", "createdAt", "updatedAt""#;

/// The status the web app gives an upload; Cellport never reads it, so segmenting leaves it.
const SEGMENTATION_STATUS: &str = "no_segmentation";

/// Adds one image and returns its id.
pub async fn insert_image(client: &Client, image: &NewImage) -> anyhow::Result<String> {
    insert_images(client, std::slice::from_ref(image))
        .await
        .with_context(|| format!("inserting image {}", image.id))?;
    Ok(image.id.clone())
}

/// Adds many images in one `COPY`: 100,000 take a second or two.
pub async fn insert_images(client: &Client, images: &[NewImage]) -> anyhow::Result<()> {
    let sink = client
        .copy_in(&format!("COPY images ({IMAGE_COLUMNS}) FROM STDIN BINARY"))
        .await
        .context("starting to copy images")?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT4,
        Type::INT4,
        Type::INT8,
        Type::INT4,
        Type::BOOL,
        Type::TEXT,
        Type::TIMESTAMP,
        Type::TIMESTAMP,
    ];
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    for image in images {
        let created_at = utc(image.created_at);
        let row: [&(dyn ToSql + Sync); 12] = [
            &image.id,
            &image.name,
            &image.original_path,
            &image.project_id,
            &image.width,
            &image.height,
            &image.file_size,
            &image.display_order,
            &image.is_video_container,
            &SEGMENTATION_STATUS,
            &created_at,
            &created_at,
        ];
        writer
            .as_mut()
            .write(&row)
            .await
            .context("copying images")?;
    }
    writer.finish().await.context("copying images")?;
    Ok(())
}

/// One row of `segmentations`: an image's polygons as the web app stores them, a JSON array
/// in a TEXT column, and the size the model saw.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSegmentation {
    pub image_id: String,
    pub polygons: String,
    pub image_width: Option<i32>,
    pub image_height: Option<i32>,
}

const SEGMENTATION_COLUMNS: &str = r#"id, "imageId", polygons, model, threshold, "imageWidth",
    "imageHeight", "createdAt", "updatedAt""#;

/// The model the web app names on its segmentations.
const MODEL: &str = "hrnet";
const THRESHOLD: f64 = 0.5;

/// Stores an image's segmentation, replacing the one it had (an image has at most one).
pub async fn insert_segmentation(
    client: &Client,
    image_id: &str,
    polygons: &str,
    image_width: Option<i32>,
    image_height: Option<i32>,
) -> anyhow::Result<()> {
    let now = utc(OffsetDateTime::now_utc());
    client
        .execute(
            &format!(
                r#"INSERT INTO segmentations ({SEGMENTATION_COLUMNS})
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
                   ON CONFLICT ("imageId") DO UPDATE SET polygons = EXCLUDED.polygons,
                       "imageWidth" = EXCLUDED."imageWidth", "imageHeight" = EXCLUDED."imageHeight",
                       "updatedAt" = EXCLUDED."updatedAt""#
            ),
            &[
                &new_id(),
                &image_id,
                &polygons,
                &MODEL,
                &THRESHOLD,
                &image_width,
                &image_height,
                &now,
            ],
        )
        .await
        .with_context(|| format!("inserting the segmentation of image {image_id}"))?;
    Ok(())
}

/// Adds many segmentations in one `COPY`, for images that have none yet.
pub async fn insert_segmentations(
    client: &Client,
    segmentations: &[NewSegmentation],
) -> anyhow::Result<()> {
    let sink = client
        .copy_in(&format!(
            "COPY segmentations ({SEGMENTATION_COLUMNS}) FROM STDIN BINARY"
        ))
        .await
        .context("starting to copy segmentations")?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::FLOAT8,
        Type::INT4,
        Type::INT4,
        Type::TIMESTAMP,
        Type::TIMESTAMP,
    ];
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &types));
    let now = utc(OffsetDateTime::now_utc());
    for segmentation in segmentations {
        let id = new_id();
        let row: [&(dyn ToSql + Sync); 9] = [
            &id,
            &segmentation.image_id,
            &segmentation.polygons,
            &MODEL,
            &THRESHOLD,
            &segmentation.image_width,
            &segmentation.image_height,
            &now,
            &now,
        ];
        writer
            .as_mut()
            .write(&row)
            .await
            .context("copying segmentations")?;
    }
    writer.finish().await.context("copying segmentations")?;
    Ok(())
}

/// Where a share stands: the web app makes it `pending`, the invitee's acceptance makes it
/// `accepted`, the owner may revoke it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareStatus {
    Pending,
    Accepted,
    Revoked,
}

impl ShareStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ShareStatus::Pending => "pending",
            ShareStatus::Accepted => "accepted",
            ShareStatus::Revoked => "revoked",
        }
    }
}

/// Shares a project, from its owner, with a user (`shared_with_id`), an address (`email`, for
/// someone who may not have signed up yet) or both; returns the share's id.
pub async fn insert_share(
    client: &Client,
    project: &str,
    shared_with_id: Option<&str>,
    email: Option<&str>,
    status: ShareStatus,
) -> anyhow::Result<String> {
    let id = new_id();
    let now = utc(OffsetDateTime::now_utc());
    client
        .execute(
            r#"INSERT INTO project_shares
                   (id, "projectId", "sharedById", "sharedWithId", email, "shareToken", status,
                    "createdAt", "updatedAt")
               SELECT $1, p.id, p."userId", $3, $4, $5, $6, $7, $7 FROM projects p WHERE p.id = $2"#,
            &[
                &id,
                &project,
                &shared_with_id,
                &email,
                &new_id(),
                &status.as_str(),
                &now,
            ],
        )
        .await
        .with_context(|| format!("sharing project {project}"))
        .and_then(|inserted| match inserted {
            1 => Ok(()),
            _ => Err(anyhow::anyhow!("sharing project {project}: no such project")),
        })?;
    Ok(id)
}
