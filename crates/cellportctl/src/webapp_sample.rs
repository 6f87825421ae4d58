//! A project of the built-in file store written into the web app's tables and uploads directory
//! as the web app would have stored it: how `cellportctl demo --postgres` fills its database.

use std::path::Path;

use anyhow::Context;
use cellport_core::{ImageRecord, Point, PolygonKind, Project, ProjectId, UserId};
use cellport_io::{FileProjectStore, ProjectSource};
use cellport_runtime::webapp::{
    self, NewImage, NewSegmentation, insert_images, insert_project, insert_segmentations,
    insert_user,
};
use serde::Serialize;
use time::OffsetDateTime;

/// What the web app's segmentation model names every polygon it finds.
const POLYGON_CLASS: &str = "spheroid";
const POLYGON_CONFIDENCE: f64 = 0.9;

/// Images read from the file store at a time.
const PAGE_SIZE: usize = 500;

/// Where the sample landed in the web app's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebAppSample {
    /// The web app's user who owns the project: tokens for it see the project.
    pub user_id: UserId,
    pub project_id: ProjectId,
}

/// One object of a segmentation's `polygons` array, in the web app's shape.
#[derive(Serialize)]
struct WebAppPolygon<'a> {
    id: String,
    points: &'a [Point],
    #[serde(rename = "type")]
    kind: PolygonKind,
    class: &'static str,
    confidence: f64,
}

/// Adds a user with `owner_email`, a project titled like `project`, one `images` row per image
/// of `project` in `store` (its file copied under `uploads_dir` at the row's `"originalPath"`)
/// and one `segmentations` row per image holding its polygons.
pub async fn fill_webapp(
    client: &tokio_postgres::Client,
    store: &FileProjectStore,
    project: &Project,
    owner_email: &str,
    uploads_dir: &Path,
) -> anyhow::Result<WebAppSample> {
    let user_id = webapp::new_id();
    let project_id = webapp::new_id();
    insert_user(client, &user_id, owner_email).await?;
    insert_project(
        client,
        &project_id,
        &project.name,
        &user_id,
        project.created_at,
    )
    .await?;

    // The web app keeps uploads at `<user>/<project>/originals/<upload ms>_<name>`.
    let originals = format!("{user_id}/{project_id}/originals");
    let originals_dir = uploads_dir.join(&originals);
    tokio::fs::create_dir_all(&originals_dir)
        .await
        .with_context(|| format!("creating {}", originals_dir.display()))?;
    let uploaded_at = OffsetDateTime::now_utc();
    let upload_ms = uploaded_at.unix_timestamp_nanos() / 1_000_000;

    let mut images = Vec::new();
    let mut segmentations = Vec::new();
    for (display_order, image) in all_images(store, &project.id).await?.iter().enumerate() {
        let file_name = format!("{upload_ms}_{}", image.name.replace(['/', '\\'], "_"));
        let target = originals_dir.join(&file_name);
        let source = store.image_path(&project.id, &image.id);
        tokio::fs::copy(&source, &target)
            .await
            .with_context(|| format!("copying {} to {}", source.display(), target.display()))?;
        let row = NewImage {
            original_path: format!("{originals}/{file_name}"),
            width: known_side(image.width),
            height: known_side(image.height),
            file_size: i64::try_from(image.size_bytes).ok(),
            display_order: i32::try_from(display_order).ok(),
            created_at: uploaded_at,
            ..NewImage::new(&project_id, &image.name)
        };
        segmentations.push(NewSegmentation {
            image_id: row.id.clone(),
            polygons: polygons_json(image),
            image_width: row.width,
            image_height: row.height,
        });
        images.push(row);
    }
    insert_images(client, &images).await?;
    insert_segmentations(client, &segmentations).await?;
    Ok(WebAppSample {
        user_id: user_id.parse().context("a UUID is a user id")?,
        project_id: project_id.parse().context("a UUID is a project id")?,
    })
}

/// Every image of a project in the file store, in project order.
async fn all_images(
    store: &FileProjectStore,
    project: &ProjectId,
) -> anyhow::Result<Vec<ImageRecord>> {
    let mut images = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .image_page(project, cursor.as_deref(), PAGE_SIZE)
            .await?;
        images.extend(page.images);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(images),
        }
    }
}

/// A side the file store knows (it stores 0 for an unknown one) as the web app's nullable column.
fn known_side(pixels: u32) -> Option<i32> {
    i32::try_from(pixels).ok().filter(|&side| side > 0)
}

/// The image's polygons as the web app's `polygons` text: a JSON array of objects.
fn polygons_json(image: &ImageRecord) -> String {
    let polygons: Vec<WebAppPolygon<'_>> = image
        .polygons
        .iter()
        .enumerate()
        .map(|(idx, polygon)| WebAppPolygon {
            id: format!("polygon_{}", idx + 1),
            points: &polygon.points,
            kind: polygon.kind,
            class: POLYGON_CLASS,
            confidence: POLYGON_CONFIDENCE,
        })
        .collect();
    serde_json::to_string(&polygons).expect("polygons serialize")
}

#[cfg(test)]
mod tests {
    use cellport_core::{ImageId, Polygon};

    use super::*;

    #[test]
    fn polygons_take_the_web_apps_shape() {
        let image = ImageRecord {
            id: "img1".parse::<ImageId>().unwrap(),
            name: "a.png".into(),
            width: 10,
            height: 10,
            size_bytes: 1,
            polygons: vec![
                Polygon {
                    kind: PolygonKind::External,
                    points: vec![Point { x: 1.0, y: 2.0 }, Point { x: 3.5, y: 4.0 }],
                },
                Polygon {
                    kind: PolygonKind::Internal,
                    points: vec![Point { x: 2.0, y: 2.0 }],
                },
            ],
            warnings: Vec::new(),
        };
        assert_eq!(
            polygons_json(&image),
            r#"[{"id":"polygon_1","points":[{"x":1.0,"y":2.0},{"x":3.5,"y":4.0}],"type":"external","class":"spheroid","confidence":0.9},{"id":"polygon_2","points":[{"x":2.0,"y":2.0}],"type":"internal","class":"spheroid","confidence":0.9}]"#
        );
    }

    #[test]
    fn an_unknown_side_is_null() {
        assert_eq!(known_side(0), None);
        assert_eq!(known_side(768), Some(768));
        assert_eq!(known_side(u32::MAX), None);
    }
}
